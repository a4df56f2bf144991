#!/usr/bin/env python
"""Push a finished hf_vae training run to the Hugging Face Hub, in one commit.

    python scripts/push_to_hub.py OUTPUT_DIR REPO_ID [--token TOKEN] [--private] [--revision BRANCH]
                                  [--commit-message MSG] [--license ID] [--no-diffusers] [--dry-run FOLDER]

Uploads config.json (with auto_map), model.safetensors, the model code (for trust_remote_code), a README.md model
card rendered from model_cards/, preview.png (reconstructions and samples) and, for a KLAE, a diffusers copy under
vae/. checkpoints/ is never pushed. `--dry-run FOLDER` builds those files into FOLDER and pushes nothing.

The token defaults to HF_TOKEN or the stored login (`hf auth login`); HF_ENDPOINT selects another Hub.
Exit status: 0 on success, 1 when the push was refused (nothing was pushed), 2 for bad command-line arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from hf_vae.utils.cli import ScriptParser

    parser = ScriptParser(prog="push_to_hub.py", description=__doc__.split("\n\n")[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="the trainer's output directory (config.json, model.safetensors, "
                                           "metrics.json, training_args.json, reconstructions.png, samples.png)")
    parser.add_argument("repo_id", help="'namespace/name', or 'name' for the token owner's namespace")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or the login)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    parser.add_argument("--commit-message", default=None, help="default: 'Upload <model> trained on <dataset> ...'")
    parser.add_argument("--license", default=None, help="license id for the card's metadata (default: apache-2.0)")
    parser.add_argument("--no-diffusers", action="store_true", help="KLAE: do not add the diffusers copy under vae/")
    parser.add_argument("--template-dir", default=None, help="model card templates (default: model_cards/)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds each Hub request may take to connect and per read (default: HF_VAE_HUB_TIMEOUT, "
                             "else 30)")
    parser.add_argument("--retries", type=int, default=None,
                        help="retries of a request after a dropped connection or a timeout (default: "
                             "HF_VAE_HUB_RETRIES, else 2)")
    parser.add_argument("--dry-run", metavar="FOLDER", default=None,
                        help="build the files into FOLDER (new or empty) and push nothing")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from hf_vae.integrations.hub import (
        DEFAULT_LICENSE,
        HubPushError,
        ModelCardTemplateError,
        OutputDirError,
        prepare_output_dir,
        push_output_dir,
    )

    options = dict(license=args.license or DEFAULT_LICENSE, template_dir=args.template_dir,
                   diffusers_copy=False if args.no_diffusers else None)
    try:
        if args.dry_run:
            files = prepare_output_dir(args.output_dir, args.dry_run, repo_id=args.repo_id, **options)
            print(f"Built {len(files)} files in {args.dry_run} (nothing pushed):")
            for name in files:
                print(f"  {name}")
            return 0
        commit = push_output_dir(args.output_dir, args.repo_id, token=args.token, private=args.private,
                                 revision=args.revision, commit_message=args.commit_message, timeout=args.timeout,
                                 retries=args.retries, **options)
    except (OutputDirError, ModelCardTemplateError, HubPushError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Pushed {args.output_dir} to {commit.repo_url} in commit {commit.oid}: {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
