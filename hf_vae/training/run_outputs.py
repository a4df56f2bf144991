"""What a run shows and writes besides the model: the banner before the first step, the image grids
(reconstructions.png, samples.png), the first examples of the evaluation split, the run's arguments as JSON."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

import torch

from .recipes import recipe_path
from .training_args import DataArguments, TrainArguments

logger = logging.getLogger("hf_vae.training")


def startup_banner(train_args: TrainArguments, data_args: DataArguments, model, dataset_info: Dict[str, Any],
                    output_dir: str, max_steps: int, warmup_steps: int, effective_batch: int,
                    num_processes: int, autoencoder=None, recipe_applied: Optional[Dict[str, Any]] = None,
                    threads: Optional[str] = None) -> str:
    """What the run is about to do, printed before the first step: where, what model, what data, how long."""
    config = model.config
    num_params = sum(p.numel() for p in model.parameters())
    shape = "x".join(str(d) for d in (config if autoencoder is None else autoencoder.config).data_shape)
    if autoencoder is not None:  # a prior over the autoencoder's codes
        arch = (f"{config.network_description}, over "
                f"{'x'.join(map(str, config.code_shape))} maps of {config.num_embeddings} codes of {train_args.vqvae}")
    else:
        from ..integrations.model_card import describe_architecture

        arch = ", ".join(describe_architecture(model, brief=True))
    sizes = dataset_info.get("num_examples") or {}
    counts = ", ".join(f"{n:,} {split}" for split, n in sizes.items() if n)
    epochs = ""
    if sizes.get("train"):
        epochs = f" (~{max_steps * effective_batch / sizes['train']:.3g} epochs)"
    batch = f"batch {effective_batch}" + (f" = {train_args.batch_size} x {num_processes} processes x "
                                          f"{train_args.gradient_accumulation_steps}"
                                          if effective_batch != train_args.batch_size else "")
    recipe_line = []
    if recipe_applied:
        shown = ", ".join(f"{k}={v}" for k, v in recipe_applied.items())
        recipe_line = [f"  recipe  {shown} (from {recipe_path(train_args.model)}, for what was not given)"]
    return "\n".join([
        f"Training {train_args.model} on {data_args.dataset}",
        f"  output  {output_dir}",
        f"  model   {train_args.model} ({type(config).__name__}; {arch}): {num_params / 1e6:.2f} M parameters",
        f"  data    {data_args.dataset}: {shape} images" + (f", {counts} examples" if counts else ""),
        f"  steps   {max_steps}{epochs}, {batch}, lr {train_args.learning_rate:g} ({train_args.lr_scheduler}, "
        f"{warmup_steps} warm-up), evaluation every {train_args.eval_steps or max_steps} steps",
    ] + recipe_line + ([f"  threads {threads}"] if threads else []))


def publish_diffusers_copy(model, output_dir: str) -> None:
    """A KLAE output folder also carries the diffusers `AutoencoderKL` copy in vae/ (as a Hub push does)."""
    try:
        from ..integrations.diffusers import save_diffusers_copy
    except ImportError:
        logger.warning("diffusers is not installed: %s has no vae/ folder (AutoencoderKL copy).", output_dir)
        return
    save_diffusers_copy(model, output_dir)


def image_grids(model, batch: Dict[str, torch.Tensor], settings: Dict, output_dir: str, num_images: int,
                 seed: int, prefix: str = "") -> None:
    """reconstructions.png (inputs on the top rows, reconstructions below) and samples.png (prior samples)."""
    from ..utils.images import class_sample_labels, save_image_grid

    if len(model.config.data_shape) != 3:
        return
    device = next(model.parameters()).device
    lo, hi = settings["value_range"]
    n = max(1, min(num_images // 2, batch["pixel_values"].shape[0]))
    nrow = max(1, min(8, n))
    n = max(nrow, (n // nrow) * nrow)  # whole rows, so that inputs and reconstructions line up
    x = batch["pixel_values"][:n].to(device)
    labels = batch["labels"][:n].to(device) if model.is_conditional else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            recon = model.reconstruct(x, labels).clamp(lo, hi)
            generator = torch.Generator(device=device).manual_seed(seed)
            k = max(1, num_images)
            sample_labels = None
            if model.is_conditional:
                if model.num_classes is None:  # condition vectors: the first example's, for every sample
                    sample_labels = batch["labels"][:1].repeat(k, *([1] * (batch["labels"].dim() - 1))).to(device)
                else:  # one row of 8 per class, every class (num_sample_images does not cut classes off)
                    k = 8 * model.num_classes
                    sample_labels = class_sample_labels(model.num_classes, k, device, per_row=8)
            samples = model.generate(k, labels=sample_labels, generator=generator).clamp(lo, hi)
    finally:
        model.train(was_training)
    save_image_grid(torch.cat([x, recon]), os.path.join(output_dir, f"{prefix}reconstructions.png"), nrow=nrow,
                    value_range=(lo, hi))
    save_image_grid(samples, os.path.join(output_dir, f"{prefix}samples.png"), nrow=8, value_range=(lo, hi))


def dataset_kwargs(data_args: DataArguments) -> Dict[str, Any]:
    """The data arguments `build_dataset` takes beyond the name and split (those given)."""
    extra = {k: getattr(data_args, k) for k in ("image_column", "label_column", "data_dir")
             if getattr(data_args, k) is not None}
    if data_args.skip_bad_images:
        extra["skip_bad_images"] = True
    return extra


def first_eval_batch(dataset: str, split: str, settings: Dict, data_args: DataArguments, num: int,
                      require_labels: bool) -> Dict[str, torch.Tensor]:
    from ..data import build_dataset, collate_batch

    extra = dataset_kwargs(data_args)
    stream = build_dataset(dataset, split, image_size=settings["image_size"], in_channels=settings["in_channels"],
                           value_range=settings["value_range"], binarize=settings["binarize"], shuffle=False,
                           data_seed=data_args.data_seed, require_labels=require_labels, **extra)
    rows = []
    for row in stream:
        rows.append(row)
        if len(rows) >= num:
            break
    return collate_batch(rows)


def jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def tracker_config(values: Dict[str, Any]) -> Dict[str, Any]:
    # TensorBoard's hparams take scalars and strings only.
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(jsonable(v))) for k, v in values.items()}
