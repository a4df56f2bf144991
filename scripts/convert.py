#!/usr/bin/env python
"""Convert KL-autoencoder weights between hf_vae, diffusers and original latent-diffusion checkpoints.

The source format is detected: an hf_vae folder, a diffusers AutoencoderKL folder or Hub repo (`--subfolder vae`
for a pipeline), or a `.safetensors` file with diffusers or latent-diffusion names (optionally a whole Stable
Diffusion checkpoint whose autoencoder is under `first_stage_model.`). `--to` picks the output:

    python scripts/convert.py runwayml-sd15-folder  out/klae       --to hf_vae --subfolder vae
    python scripts/convert.py out/klae               out/vae        --to diffusers
    python scripts/convert.py sd-v1-5.safetensors    out/klae       --to hf_vae --set scaling_factor=0.18215
    python scripts/convert.py out/klae               vae.safetensors --to ldm [--prefix first_stage_model.]

Weights are read from and written to safetensors only. Conversion is a renaming: every tensor is bit-for-bit
the original (the written copy is reloaded and compared unless `--no-verify`). An existing destination is refused
unless `--overwrite` is given; the output is written beside it and then swapped in, so a failed conversion leaves the
old destination as it was and an overwritten folder holds no stale files of the previous one.
"""

import argparse
import ast
import inspect
import json
import os
import shutil
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from hf_vae.klae_conversion import to_hf_state_dict, to_ldm_state_dict  # noqa: E402
from hf_vae import families  # noqa: E402
from hf_vae.utils.cli import ScriptParser, run_main  # noqa: E402

#: the family latent-diffusion files and diffusers' AutoencoderKL convert into (the family table declares it)
FAMILY = families.importing("ldm")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_overrides(items: List[str]) -> Dict[str, object]:
    """`["scaling_factor=0.13025", "force_upcast=False"]` -> {"scaling_factor": 0.13025, "force_upcast": False}."""
    config_class = FAMILY.config_class
    fields = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Expected --set KEY=VALUE, got {item!r}.")
        if key not in fields:
            raise ValueError(f"--set {item}: {key!r} is not a {config_class.__name__} field; expected one of "
                             f"{sorted(fields)}.")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value  # plain strings such as act_fn=silu
    return overrides


#: what a conversion writes into a folder; --overwrite replaces a folder holding only such files
MODEL_FILE_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.py")


def check_replaceable(destination: str) -> None:
    """--overwrite replaces a whole folder: only one holding a converted model's files (never a training run's
    checkpoints, logs, metrics or anything else), or a single .safetensors file."""
    import fnmatch

    if not os.path.isdir(destination) or os.path.islink(destination):
        if os.path.lexists(destination) and not destination.endswith(".safetensors"):
            raise FileExistsError(f"--overwrite {destination}: a file that is not .safetensors; expected a model "
                                  f"folder or a .safetensors file to replace.")
        from hf_vae.training.checkpointing import read_run_manifest

        parent, name = os.path.split(destination)
        if name in ((read_run_manifest(parent) or {}).get("entries") or ()):
            raise FileExistsError(f"--overwrite {destination}: the weights of the training run in {parent} (its "
                                  f"run_manifest.json lists them); expected a path outside a run's folder.")
        return
    foreign = sorted(name for name in os.listdir(destination)
                     if not (os.path.isfile(os.path.join(destination, name))
                             and any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILE_PATTERNS)))
    if foreign:
        raise FileExistsError(f"--overwrite {destination}: the folder also holds {', '.join(foreign[:6])} (not files "
                              f"of a converted model; a training run's?); expected a folder of model files only "
                              f"({', '.join(MODEL_FILE_PATTERNS)}). Convert into a new path instead.")


def load_source(source: str, subfolder: Optional[str], overrides: Dict[str, object], dtype):
    kwargs = dict(overrides)
    if subfolder:
        kwargs["subfolder"] = subfolder
    if dtype is not None:
        kwargs["dtype"] = dtype
    return FAMILY.model_class.from_pretrained(source, **kwargs)


def save_ldm(model, destination: str, prefix: str = "") -> None:
    from safetensors.torch import save_file

    if not destination.endswith(".safetensors"):
        raise ValueError(f"Expected a .safetensors destination for --to ldm, got {destination!r}.")
    state = to_ldm_state_dict(model.state_dict(), len(model.config.block_out_channels))
    state = {prefix + key: value.contiguous() for key, value in state.items()}
    metadata = {"format": "pt", "hf_vae_config": json.dumps(model.config.to_diff_dict())}
    save_file(state, destination, metadata=metadata)


def verify(model, destination: str, target: str) -> None:
    """Reload what was written and check every tensor is identical to the model's."""
    if target == "diffusers":
        from diffusers import AutoencoderKL

        reloaded = AutoencoderKL.from_pretrained(destination).state_dict()
    elif target == "ldm":
        from safetensors.torch import load_file

        reloaded = to_hf_state_dict(load_file(destination))
    else:
        reloaded = FAMILY.model_class.from_pretrained(destination, dtype="auto").state_dict()
    original = model.state_dict()
    if set(reloaded) != set(original):
        raise RuntimeError(f"Verification failed: key sets differ: {sorted(set(reloaded) ^ set(original))}.")
    bad = [key for key in original if not torch.equal(original[key], reloaded[key].to(original[key].dtype))]
    if bad:
        raise RuntimeError(f"Verification failed: tensors differ after the round trip: {bad}.")


def main(argv: Optional[List[str]] = None) -> int:
    parser = ScriptParser(prog="convert.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="hf_vae folder, diffusers folder / Hub repo, or .safetensors file")
    parser.add_argument("destination", help="output folder (hf_vae, diffusers) or .safetensors file (ldm)")
    parser.add_argument("--to", choices=("hf_vae", "diffusers", "ldm"), required=True, help="output format")
    parser.add_argument("--subfolder", default=None, help="component folder inside the source, e.g. 'vae'")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. scaling_factor=0.13025 (repeatable)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast the weights (default: float32)")
    parser.add_argument("--prefix", default="", help="key prefix for --to ldm, e.g. 'first_stage_model.'")
    parser.add_argument("--no-verify", action="store_true", help="skip reloading the output to check it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    args = parser.parse_args(argv)

    destination = os.path.abspath(args.destination)
    if os.path.lexists(destination) and not args.overwrite:
        raise FileExistsError(f"Destination {args.destination} exists; expected a new path (pass --overwrite to "
                              f"replace it).")
    if args.overwrite:
        check_replaceable(args.destination)
    if args.to == "ldm" and not destination.endswith(".safetensors"):
        raise ValueError(f"Expected a .safetensors destination for --to ldm, got {args.destination!r}.")
    dtype = DTYPES[args.dtype] if args.dtype else None
    model = load_source(args.source, args.subfolder, parse_overrides(args.overrides), dtype)
    # Written beside the destination, checked, then swapped in: the old destination survives a failure.
    parent, name = os.path.split(destination)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".tmp-convert-{os.getpid()}-{name}")
    try:
        if args.to == "hf_vae":
            model.save_pretrained(staging)
        elif args.to == "diffusers":
            model.to_diffusers().save_pretrained(staging)
        else:
            save_ldm(model, staging, args.prefix)
        if not args.no_verify:
            verify(model, staging, args.to)
        if os.path.isdir(destination) and not os.path.islink(destination):
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
        elif os.path.exists(staging):
            os.remove(staging)
    config = model.config
    print(f"Wrote {args.to} weights to {args.destination}: block_out_channels={config.block_out_channels}, "
          f"latent_channels={config.latent_channels}, scaling_factor={config.scaling_factor}, "
          f"shift_factor={config.shift_factor}, {sum(p.numel() for p in model.parameters()):,} parameters.")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("convert.py", main))
