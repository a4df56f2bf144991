"""Latent statistics for diffusion models trained on an autoencoder's latents.

A latent diffusion model expects latents of about unit variance. The autoencoder's config says how to get there:

    SD-1.x / SDXL     z' = z · scaling_factor                      scaling_factor = 1 / std(z)
    SD3 / Flux        z' = (z − shift_factor) · scaling_factor     shift_factor = mean(z), scaling_factor = 1 / std(z)
    some SDXL VAEs    z'_c = (z_c − latents_mean_c) · scaling_factor / latents_std_c      (per channel)

(decoding inverts it). `latent_statistics` measures mean(z), std(z) (over every element of every latent) and the
per-channel means and standard deviations on a dataset, with z a posterior sample as diffusers' training scripts
draw it (`vae.encode(x).latent_dist.sample()`; `use_mode=True` takes the posterior mean instead). Sums are
accumulated in float64, so the result does not depend on the batch size. `write_latent_statistics` stores them in
a model folder's config.json (and in the diffusers copy in vae/ when there is one).

    python scripts/latent_stats.py outputs/klae-photos --dataset photos --write
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

import torch

from ..families import DIFFUSERS_COMPONENT

#: config fields `write_latent_statistics` sets, when the model's config has them.
LATENT_FIELDS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


@torch.no_grad()
def latent_statistics(model, dataset, split: str = "train", *, max_examples: Optional[int] = 10_000,
                      batch_size: int = 64, seed: int = 0, use_mode: bool = False,
                      dataset_kwargs: Optional[dict] = None) -> Dict[str, Any]:
    """Statistics of `model`'s latents on `split` of `dataset` (a name/path for `hf_vae.data.build_dataset`, or an
    iterable of rows {"pixel_values", ["labels"]}).

    Returns {"num_examples", "num_elements", "mean", "std", "scaling_factor" (1/std), "shift_factor" (mean),
    "latents_mean" (per channel, C), "latents_std" (per channel, C)}. Channels are dimension 1 of the latents
    (B, C, h, w); a vector latent (B, D) has D "channels".
    """
    from ..data import build_dataset, collate_batch
    from .evaluate import data_settings

    settings = data_settings(model.config)
    if isinstance(dataset, (str, os.PathLike)):
        stream = build_dataset(os.fspath(dataset), split, image_size=settings["image_size"],
                               in_channels=settings["in_channels"], value_range=settings["value_range"],
                               binarize=settings["binarize"], seed=seed, shuffle=False,
                               require_labels=model.is_conditional, **(dataset_kwargs or {}))
    else:
        stream = dataset
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, collate_fn=collate_batch,
                                         generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    n_examples, sums, sq_sums, counts = 0, None, None, 0
    try:
        for batch in loader:
            if max_examples is not None and n_examples >= max_examples:
                break
            x = batch["pixel_values"].to(device=device, dtype=model.dtype)
            if max_examples is not None:
                x = x[: max_examples - n_examples]
            kwargs = {}
            if model.is_conditional:
                kwargs["labels"] = batch["labels"][: len(x)].to(device)
            posterior = model.encode(x, **kwargs).latent_dist
            z = posterior.mode() if use_mode else posterior.sample(generator)
            z = z.double().transpose(0, 1).reshape(z.shape[1], -1)  # (C, B·h·w)
            sums = z.sum(1) if sums is None else sums + z.sum(1)
            sq_sums = (z * z).sum(1) if sq_sums is None else sq_sums + (z * z).sum(1)
            counts += z.shape[1]
            n_examples += len(x)
    finally:
        model.train(was_training)
    if not n_examples:
        raise ValueError(f"Expected examples in split {split!r} of {dataset!r}, got none.")
    channel_mean = sums / counts
    # Population variance E[z²] − E[z]², clamped at 0 against rounding.
    channel_std = (sq_sums / counts - channel_mean ** 2).clamp_min(0).sqrt()
    mean = float(sums.sum() / (counts * len(sums)))
    std = math.sqrt(max(0.0, float(sq_sums.sum() / (counts * len(sums))) - mean ** 2))
    if std == 0:
        raise ValueError("The latents have zero variance on this data: no scaling factor exists.")
    return {"num_examples": n_examples, "num_elements": counts * len(sums), "mean": mean, "std": std,
            "scaling_factor": 1.0 / std, "shift_factor": mean, "latents_mean": channel_mean.tolist(),
            "latents_std": channel_std.tolist()}


#: written by --write beside config.json: every write's replaced and written values, oldest first
LATENT_STATS_FILE = "latent_stats.json"


def _write_json_fields(path: str, values: Dict[str, Any]) -> None:
    from .evaluate import write_json_atomic

    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    config.update(values)
    write_json_atomic(config, path)


def write_latent_statistics(model_dir: str, stats: Dict[str, Any], fields=LATENT_FIELDS) -> Dict[str, Any]:
    """Store `stats`' `fields` in `model_dir/config.json` (and `model_dir/vae/config.json`, the diffusers copy),
    each file rewritten atomically. Only fields the model's config has are written; asking for others is an error.

    Returns the values written.
    """
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"Expected a model folder with config.json, got {model_dir!r}.")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    missing = [f for f in fields if f not in config]
    if missing:
        raise ValueError(f"The config of {model_dir!r} (model_type {config.get('model_type')!r}) has no field(s) "
                         f"{missing}: expected a model whose config holds {list(fields)} (the KLAE; the VQ-VAE "
                         f"has scaling_factor only).")
    values = {f: stats[f] for f in fields}
    bad = [f for f, v in values.items() if not all(math.isfinite(x) for x in (v if isinstance(v, list) else [v]))]
    if bad:
        raise ValueError(f"Latent statistics {bad} of {model_dir!r} are not finite ({ {f: values[f] for f in bad} }); "
                         f"expected finite values: config.json was left as it was.")
    # The values replaced are kept beside them (and listed in the run manifest, so that the guard of the output
    # folder knows the file): --write never loses the previous scaling.
    from ..training.checkpointing import RUN_MANIFEST, record_run_entries
    from .evaluate import write_json_atomic

    history = os.path.join(model_dir, LATENT_STATS_FILE)
    if os.path.isfile(os.path.join(model_dir, RUN_MANIFEST)):
        record_run_entries(model_dir, [LATENT_STATS_FILE])
    writes = []
    if os.path.isfile(history):
        with open(history, encoding="utf-8") as handle:
            writes = json.load(handle).get("writes", [])
    writes.append({"previous": {f: config.get(f) for f in fields}, "written": values})
    write_json_atomic({"writes": writes}, history)
    _write_json_fields(path, values)
    diffusers_config = os.path.join(model_dir, DIFFUSERS_COMPONENT, "config.json")
    if os.path.isfile(diffusers_config):
        _write_json_fields(diffusers_config, values)
    return values


def main(argv=None) -> Dict[str, Any]:
    """scripts/latent_stats.py: measure (and with --write store) the latent statistics of a model folder."""
    import argparse

    from ..utils.cli import ScriptParser

    parser = ScriptParser(prog="latent_stats.py", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="an hf_vae model folder (a training output)")
    parser.add_argument("--dataset", required=True, help="dataset name or path (as for train.py)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max_examples", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use_mode", action="store_true", help="the posterior mean instead of a posterior sample")
    parser.add_argument("--write", action="store_true",
                        help="store scaling_factor, shift_factor, latents_mean, latents_std in config.json (and vae/)")
    parser.add_argument("--fields", nargs="+", default=list(LATENT_FIELDS), choices=LATENT_FIELDS,
                        help="which fields --write stores (default: all four; SD-1.x pipelines read scaling_factor)")
    args = parser.parse_args(argv)
    parser.check_bounds(args, {"max_examples": (1, None), "batch_size": (1, 65536)})

    import hf_vae  # noqa: F401  (registers the model types)
    from transformers import AutoModel

    if args.model_dir.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(args.model_dir)):
        raise FileNotFoundError(f"model_dir {args.model_dir}: no such folder; expected a model folder (a training "
                                f"output) or a Hub repo id such as 'user/model'.")
    model = AutoModel.from_pretrained(args.model_dir)
    stats = latent_statistics(model, args.dataset, args.split, max_examples=args.max_examples,
                              batch_size=args.batch_size, seed=args.seed, use_mode=args.use_mode)
    print(json.dumps(stats, indent=2))
    current = {f: getattr(model.config, f, None) for f in LATENT_FIELDS}
    print(f"\nstd {stats['std']:.6g} -> scaling_factor {stats['scaling_factor']:.6g} (config now: "
          f"{current['scaling_factor']}); mean {stats['mean']:.6g} -> shift_factor (config now: "
          f"{current['shift_factor']})")
    if args.write:
        written = write_latent_statistics(args.model_dir, stats, args.fields)
        diffusers_copy = os.path.isdir(os.path.join(args.model_dir, DIFFUSERS_COMPONENT))
        print(f"written to {args.model_dir}/config.json{f' and {DIFFUSERS_COMPONENT}/config.json' if diffusers_copy else ''}: "
              f"{sorted(written)}")
    return stats
