"""One training loop for every hf_vae variant, on `datasets` streams, through `accelerate.Accelerator`.

Read `train` from top to bottom: it is the whole algorithm.

    1. the Accelerator (processes, devices, mixed precision, trackers) and the output folder
    2. the model, built from its config with the data's shape filled in
    3. the objective (−ELBO, or the KLAE / VQGAN loss with its discriminator), optimisers, schedules, EMA
    4. resume: the newest complete checkpoint restores weights, optimisers, schedules, RNGs and data position
    5. the loop: accumulate gradients over micro-batches, clip, check for NaN/inf, step, log, evaluate, checkpoint
    6. the end: final checkpoint, evaluation on the held-out split, metrics.json, image grids, the published
       model (config.json + model.safetensors, written atomically), optional push to the Hub

The same command runs on one CPU, one GPU, or many GPUs and machines (`accelerate launch`); see the README, "Several GPUs and machines".
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..data.noise import BatchNoise
from ..evaluation.evaluate import (
    data_settings,
    evaluate,
    format_comparison_table,
    format_metrics_table,
    metrics_record,
    write_json_atomic,
)
from .arguments import (
    DataArguments,
    TrainArguments,
    apply_recipe,
    check_model_config,
    debug_requested,
    parse_command_line,
)
from .checkpointing import (
    RUN_END_ENTRIES,
    RUN_START_ENTRIES,
    TrainingState,
    apply_resume_overrides,
    checkpoint_dir,
    claim_output_dir,
    clear_previous_run,
    describe_cleared,
    latest_checkpoint,
    load_checkpoint,
    publish_pretrained,
    record_run_entries,
    remove_publish_leftovers,
    remove_temporary,
    resolve_resume,
    save_checkpoint,
    set_aside_newer,
)
from .ema import EMA
from .latent_density import components_to_fit, fit_on_training_data
from .objectives import build_objective
from .streams import TrainStream
from .tracking import make_trackers

logger = logging.getLogger("hf_vae.training")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite (and --skip_nonfinite was not set)."""


# ------------------------------------------------------------------------------------------------------------
# Helpers the loop calls (kept small; the loop itself is `train`)
# ------------------------------------------------------------------------------------------------------------


def default_output_dir(model: str, dataset: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(str(dataset))) or str(dataset))
    return os.path.join("outputs", f"{model}-{slug}")


def _resolve_mixed_precision(requested: str) -> str:
    """fp16 needs an accelerator; on a CPU-only machine fall back to full precision rather than fail."""
    if requested != "fp16":
        return requested
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or \
        torch.backends.mps.is_available()
    if on_cpu or not has_accelerator:
        warnings.warn("--mixed_precision fp16 needs a GPU (CUDA/XPU/MPS) and this run has none: training in "
                      "full precision (use bf16 for reduced precision on CPUs).")
        return "no"
    return requested


def _cpu_only() -> bool:
    """No accelerator device is available: Accelerate then needs `cpu=True` to set up multi-process (gloo)
    training; without it, processes started by `accelerate launch` would each train alone."""
    import accelerate.utils as utils

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return False
    for name in ("is_xpu_available", "is_npu_available", "is_mlu_available", "is_musa_available",
                 "is_sdaa_available", "is_hpu_available", "is_neuron_available", "is_torch_xla_available"):
        check = getattr(utils, name, None)
        try:
            if check is not None and check():
                return False
        except Exception:  # a probe that fails means that device is not usable here
            continue
    return True


def build_model_config(train_args: TrainArguments, data_args: DataArguments, model_config: Dict[str, Any],
                       dataset_info: Dict[str, Any], autoencoder=None):
    """The config of `train_args.model`: the user's fields, with the data's size and channels filled in (a prior's
    codebook and code-map shape come from its `autoencoder`)."""
    import hf_vae

    name = train_args.model
    if name in hf_vae.PRIORS:
        from .priors import prior_config

        return prior_config(autoencoder, model_config, dataset_info, data_args.dataset)
    config_class = hf_vae.MODELS[name][0]
    kwargs = dict(model_config)
    image_size = kwargs.pop("sample_size", None) if name == "klae" else None
    image_size = kwargs.pop("image_size", image_size) if name == "klae" else kwargs.get("image_size")
    if image_size is None:
        image_size = dataset_info.get("image_size")
        if image_size is None:
            raise ValueError(f"Dataset {data_args.dataset!r} has no fixed image size: expected --image_size N "
                             f"(images are then resized and centre-cropped to N x N).")
    in_channels = kwargs.get("in_channels", dataset_info.get("in_channels"))
    kwargs["in_channels"] = in_channels
    if name == "klae":
        kwargs["sample_size"] = image_size
        kwargs.setdefault("out_channels", in_channels)
        if train_args.pixel_loss is not None:
            if kwargs.get("pixel_loss", train_args.pixel_loss) != train_args.pixel_loss:
                raise ValueError(f"Conflicting pixel losses: --pixel_loss {train_args.pixel_loss} and the KLAE "
                                 f"config field pixel_loss={kwargs['pixel_loss']!r}; give one.")
            kwargs["pixel_loss"] = train_args.pixel_loss
    else:
        kwargs["image_size"] = image_size
    if "dataset_size" in inspect.signature(config_class.__init__).parameters and kwargs.get("dataset_size") is None:
        kwargs["dataset_size"] = (dataset_info.get("num_examples") or {}).get("train")  # the β-TCVAE needs N
    if name == "cvae" and kwargs.get("condition_dim") is None:
        found = dataset_info.get("num_classes")
        if kwargs.get("num_classes") is None:
            if found is None:
                raise ValueError(f"--model cvae needs class labels, but dataset {data_args.dataset!r} has none that "
                                 f"its description shows (num_classes=None): expected a dataset with a label "
                                 f"column (--label_column NAME) and --num_classes N.")
            kwargs["num_classes"] = found
        elif found is not None and kwargs["num_classes"] < found:
            raise ValueError(f"--num_classes {kwargs['num_classes']} is too small for dataset {data_args.dataset!r}, "
                             f"which has {found} classes.")
    try:
        return config_class(**kwargs)
    except TypeError as error:  # a field of the wrong type; the config's own checks raise ValueError
        raise ValueError(f"Bad model config for --model {name} ({config_class.__name__}): {error}; got "
                         f"{kwargs}.") from error


def _describe(data_args: DataArguments, model_config: Dict[str, Any]) -> Dict[str, Any]:
    from ..data import describe_dataset

    kwargs = {}  # not num_train_examples: it limits the training split only, the evaluations see the whole split
    for key in ("label_column", "data_dir"):
        if getattr(data_args, key) is not None:
            kwargs[key] = getattr(data_args, key)
    size = model_config.get("image_size", model_config.get("sample_size"))
    info = describe_dataset(data_args.dataset, image_size=size, **kwargs)
    if data_args.num_train_examples is not None and info.get("num_examples"):
        info["num_examples"] = dict(info["num_examples"], train=data_args.num_train_examples)
    return info


def _publish_diffusers_copy(model, output_dir: str) -> None:
    """A KLAE output folder also carries the diffusers `AutoencoderKL` copy in vae/ (as a Hub push does)."""
    try:
        from ..integrations.diffusers import save_diffusers_copy
    except ImportError:
        logger.warning("diffusers is not installed: %s has no vae/ folder (AutoencoderKL copy).", output_dir)
        return
    save_diffusers_copy(model, output_dir)


def _startup_banner(train_args: TrainArguments, data_args: DataArguments, model, dataset_info: Dict[str, Any],
                    output_dir: str, max_steps: int, warmup_steps: int, effective_batch: int,
                    num_processes: int, autoencoder=None, recipe_applied: Optional[Dict[str, Any]] = None,
                    threads: Optional[str] = None) -> str:
    """What the run is about to do, printed before the first step: where, what model, what data, how long."""
    config = model.config
    num_params = sum(p.numel() for p in model.parameters())
    shape = "x".join(str(d) for d in (config if autoencoder is None else autoencoder.config).data_shape)
    if autoencoder is not None:  # a prior over the autoencoder's codes
        arch = (f"GPT-2, {config.n_layer} layers of width {config.n_embd}, over "
                f"{'x'.join(map(str, config.code_shape))} maps of {config.num_embeddings} codes of {train_args.vqvae}")
    elif getattr(config, "backbone", None) == "burgess":
        arch = f"burgess convs {list(config.block_out_channels)}, dense {list(config.hidden_dims)}, " \
               f"latent {config.latent_dim}"
        if config.local_latent_shape:
            channels, side, _ = config.local_latent_shape
            arch += f" + local {channels}x{side}^2"
    elif getattr(config, "backbone", "conv") == "conv":
        latent = f"latent {config.latent_dim}" if getattr(config, "latent_dim", None) else \
            f"latent {config.latent_channels}x{config.image_size // config.downsampling_factor}^2 " \
            f"(f={config.downsampling_factor})"
        arch = f"conv {list(config.block_out_channels)}, {latent}"
    else:
        arch = f"mlp {list(config.hidden_dims)}, latent {config.latent_dim}"
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
        recipe_line = [f"  recipe  {shown} (the {train_args.model} recipe, for what was not given)"]
    return "\n".join([
        f"Training {train_args.model} on {data_args.dataset}",
        f"  output  {output_dir}",
        f"  model   {train_args.model} ({type(config).__name__}; {arch}): {num_params / 1e6:.2f} M parameters",
        f"  data    {data_args.dataset}: {shape} images" + (f", {counts} examples" if counts else ""),
        f"  steps   {max_steps}{epochs}, {batch}, lr {train_args.learning_rate:g} ({train_args.lr_scheduler}, "
        f"{warmup_steps} warm-up), evaluation every {train_args.eval_steps or max_steps} steps",
    ] + recipe_line + ([f"  threads {threads}"] if threads else []))


def _apply_thread_policy(train_args: TrainArguments, model, device: torch.device) -> str:
    """Set the intra-op threads from the training step's FLOPs (hf_vae.thread_policy), or as the user asked; the
    banner's line. On an accelerator the model's work is not on the CPU, so only a user's choice is applied."""
    from .. import thread_policy

    if device.type != "cpu":
        user = thread_policy.user_num_threads(train_args.num_threads)
        if user is not None and user[1] == "--num_threads":
            torch.set_num_threads(user[0])
        return f"{torch.get_num_threads()} intra-op CPU threads (the model runs on {device.type})"
    flops = thread_policy.TRAIN_STEP_FORWARDS * thread_policy.forward_flops_per_example(model)
    return thread_policy.apply_thread_policy(flops, train_args.batch_size, train_args.num_threads).describe()


def resolved_warmup_steps(train_args: TrainArguments, max_steps: int) -> int:
    """--warmup_steps, or 5 % of the run when it is not given."""
    return train_args.warmup_steps if train_args.warmup_steps is not None else max_steps // 20


def _lr_lambda(warmup_steps: int, max_steps: int, schedule: str, min_ratio: float):
    """Linear warm-up from 0 to 1, then cosine decay to `min_ratio` (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _adam(params: List[torch.nn.Parameter], lr: float, betas, weight_decay: float, device: torch.device):
    # Fused Adam is faster and exact on CPU and CUDA (one kernel per step instead of one per tensor).
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


def _average_gradients(params: Sequence[torch.nn.Parameter], accelerator) -> None:
    """All-reduce (mean) the gradients of parameters that are not inside the DDP-wrapped model.

    The discriminator runs two forward passes per step (real and fake) and the log-variance lives in the loss,
    so neither is wrapped in DDP; their gradients are averaged here, in one flat all-reduce.
    """
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def _grad_norm(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _shutdown(accelerator, failed: bool = False) -> None:
    """End the trackers and tear the process group down while the interpreter is healthy.

    With gloo, a process group destroyed during interpreter exit (when the DDP reducer that references it is
    garbage-collected) can deadlock: its worker thread waits for the GIL to release the tensors of the last
    collective while the exiting main thread, holding the GIL, waits for that thread. So: let the worker
    finish (sleep releases the GIL), drop the DDP wrapper, then destroy the group. After an error there is no
    barrier: the other processes may never reach it.
    """
    if accelerator.num_processes > 1 and not failed:
        import gc

        accelerator.wait_for_everyone()
        time.sleep(0.2)
        accelerator.free_memory()
        gc.collect()
    accelerator.end_training()
    if accelerator.num_processes == 1:
        # Accelerate keeps its state (mixed precision among it) in process-wide singletons, so a second `train()` in
        # the same process (a notebook, a benchmark) asking for another precision would be refused. Clear them, as
        # transformers' TrainingArguments does before it builds its own accelerator.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()


def _check_replicas_agree(accelerator, named_params: Dict[str, Sequence[torch.nn.Parameter]]) -> None:
    """With several processes, every replica must hold the same weights; a cheap checksum comparison catches a
    gradient that was not averaged (it would make the replicas drift apart silently)."""
    if accelerator.num_processes == 1:
        return
    for name, params in named_params.items():
        if not params:
            continue
        checksum = torch.stack([p.detach().double().sum() for p in params]).to(accelerator.device)
        gathered = accelerator.gather(checksum[None]).view(accelerator.num_processes, -1)
        if not torch.equal(gathered.min(0).values, gathered.max(0).values):
            raise RuntimeError(f"The {name} weights differ between processes after training: expected identical "
                               f"replicas (DDP), got per-process checksums {gathered.sum(1).tolist()}.")


class _Window:
    """Sums of the loss terms since the last log line."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, logs: Dict[str, torch.Tensor]) -> None:
        for key, value in logs.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def means(self, accelerator) -> Dict[str, float]:
        if not self.count:
            return {}
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] / self.count for k in keys]).to(accelerator.device)
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        self.sums, self.count = {}, 0
        return dict(zip(keys, values.tolist()))


def _image_grids(model, batch: Dict[str, torch.Tensor], settings: Dict, output_dir: str, num_images: int,
                 seed: int, prefix: str = "") -> None:
    """reconstructions.png (inputs on the top rows, reconstructions below) and samples.png (prior samples)."""
    from ..utils.images import save_image_grid

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
                num_classes = getattr(model, "num_classes", getattr(model.config, "num_classes", None))
                if num_classes is None:
                    sample_labels = batch["labels"][:1].repeat(k, *([1] * (batch["labels"].dim() - 1))).to(device)
                else:  # one row of 8 per class, every class (num_sample_images does not cut classes off)
                    k = 8 * num_classes
                    sample_labels = torch.arange(k, device=device) // 8
            samples = model.generate(k, labels=sample_labels, generator=generator).clamp(lo, hi)
    finally:
        model.train(was_training)
    save_image_grid(torch.cat([x, recon]), os.path.join(output_dir, f"{prefix}reconstructions.png"), nrow=nrow,
                    value_range=(lo, hi))
    save_image_grid(samples, os.path.join(output_dir, f"{prefix}samples.png"), nrow=8, value_range=(lo, hi))


def _dataset_kwargs(data_args: DataArguments) -> Dict[str, Any]:
    """The data arguments `build_dataset` takes beyond the name and split (those given)."""
    extra = {k: getattr(data_args, k) for k in ("image_column", "label_column", "data_dir")
             if getattr(data_args, k) is not None}
    if data_args.skip_bad_images:
        extra["skip_bad_images"] = True
    return extra


def _first_eval_batch(dataset: str, split: str, settings: Dict, data_args: DataArguments, num: int,
                      require_labels: bool) -> Dict[str, torch.Tensor]:
    from ..data import build_dataset, collate_batch

    extra = _dataset_kwargs(data_args)
    stream = build_dataset(dataset, split, image_size=settings["image_size"], in_channels=settings["in_channels"],
                           value_range=settings["value_range"], binarize=settings["binarize"], shuffle=False,
                           data_seed=data_args.data_seed, require_labels=require_labels, **extra)
    rows = []
    for row in stream:
        rows.append(row)
        if len(rows) >= num:
            break
    return collate_batch(rows)


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _tracker_config(values: Dict[str, Any]) -> Dict[str, Any]:
    # TensorBoard's hparams take scalars and strings only.
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(_jsonable(v))) for k, v in values.items()}


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------


def train(train_args: Optional[TrainArguments] = None, data_args: Optional[DataArguments] = None,
          model_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train `train_args.model` on `data_args.dataset` and return the final evaluation record.

    Args:
        train_args: optimisation, checkpointing, evaluation and publishing settings.
        data_args: the dataset and how to stream it.
        model_config: fields for the model's config (e.g. {"latent_dim": 10, "beta": 4.0}); the data's image
            size and channels (and the CVAE's number of classes) fill the fields not given.

    Returns:
        The metrics.json record {"model", "dataset", "split", "step", "metrics"} plus "train": {"output_dir",
        "runtime_s", "examples_per_second", "skipped_batches", "resumed_from"}.

    Raises:
        ValueError: bad arguments or data (the message names what was expected and what was found).
        PerceptualWeightsMissingError: a perceptual term without LPIPS weights.
        NonFiniteLossError: NaN/inf loss or gradient, unless `skip_nonfinite`.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    import hf_vae

    run_start = time.perf_counter()
    train_args = train_args or TrainArguments()
    data_args = data_args or DataArguments()
    source = None  # the pretrained model the run starts from (--pretrained_model_name_or_path)
    if train_args.pretrained_model_name_or_path is not None:
        from .pretrained import check_requested_model, resolve_source

        source = resolve_source(train_args.pretrained_model_name_or_path, subfolder=train_args.pretrained_subfolder,
                                revision=train_args.pretrained_revision, config_file=train_args.pretrained_config)
        train_args = dataclasses.replace(train_args, model=check_requested_model(source, train_args.model))
    model_config = check_model_config(train_args.model, model_config or {})
    # The model's recipe fills every setting the user left open (arguments.RECIPES; --help lists it).
    train_args, model_config, recipe_applied = apply_recipe(train_args, data_args, model_config,
                                                            pretrained=source is not None)
    output_dir = train_args.output_dir or default_output_dir(train_args.model, data_args.dataset)

    # -- 1. Accelerator and output folder --------------------------------------------------------------------
    accelerator = Accelerator(
        cpu=_cpu_only(),
        mixed_precision=_resolve_mixed_precision(train_args.mixed_precision),
        log_with=make_trackers(train_args.report_to, os.path.join(output_dir, "logs")) or None,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, "logs")),
    )
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and int(launched) != accelerator.num_processes:
        raise RuntimeError(f"Launched as {launched} processes (WORLD_SIZE) but Accelerate set up "
                           f"{accelerator.num_processes}: the processes would train separately. Expected a "
                           f"distributed backend for this machine (see the README, 'Several GPUs and machines').")
    is_main = accelerator.is_main_process
    # Every process looks before any writes (the barrier below): a folder of another run is refused everywhere.
    previous_files = claim_output_dir(output_dir, train_args.overwrite_output_dir,
                                      train_args.resume_from_checkpoint)
    hub_repo = train_args.hub_model_id
    if train_args.push_to_hub and is_main:  # a bad token or repository is found before the first step, not after
        from ..integrations.hub import check_push_target

        hub_repo = check_push_target(train_args.hub_model_id, private=train_args.hub_private)
    accelerator.wait_for_everyone()

    # -- 2. the data's description and the model (bad arguments fail here, before anything is written) ------
    # A prior learns the code maps of a frozen autoencoder, which also fixes the data's size and range.
    autoencoder = None
    if train_args.model in hf_vae.PRIORS:
        from .priors import load_autoencoder

        autoencoder = load_autoencoder(train_args.vqvae)
    dataset_info = _describe(data_args, model_config if autoencoder is None else
                             {"image_size": autoencoder.config.image_size})
    resume_path = resolve_resume(train_args.resume_from_checkpoint, output_dir)
    if source is None:
        config = build_model_config(train_args, data_args, model_config, dataset_info, autoencoder)
    else:
        from .pretrained import run_config

        config = run_config(source, model_config, image_size=dataset_info.get("image_size"),
                            pixel_loss=train_args.pixel_loss, dataset_num_classes=dataset_info.get("num_classes"),
                            dataset=data_args.dataset)
    if autoencoder is None:  # a config that cannot fit is refused before anything is allocated, naming the field
        from ..memory import check_fits_in_memory

        check_fits_in_memory(hf_vae.MODELS[train_args.model][1], config, train_args.batch_size, accelerator.device)
    settings = data_settings(config if autoencoder is None else autoencoder.config, data_args.binarize)
    set_seed(train_args.seed)  # the same initial weights on every process
    if source is not None and resume_path is None:
        model = source.load(config)  # a resumed fine-tune takes its weights from the checkpoint instead
        accelerator.print(f"Starting from {source.describe()}.")
    else:
        model = {**hf_vae.MODELS, **hf_vae.PRIORS}[train_args.model][1](config)
    from .pretrained import freeze_modules

    frozen_modules = freeze_modules(model, train_args.train_modules)
    if train_args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    objective = build_objective(train_args, model, settings["value_range"], data_args.dataset, autoencoder)
    model.to(accelerator.device)
    objective.to(accelerator.device)
    if train_args.compile:
        model.enable_fast_path()
        on = [name for name in ("compile", "channels_last", "fuse_norms") if model.fast_path_settings[name]]
        accelerator.print(f"--compile: fast path on {accelerator.device.type}: "
                          f"{', '.join(on) if on else 'the default path (none of its pieces is faster on a CPU)'}.")
    if is_main:
        if previous_files and train_args.overwrite_output_dir:
            accelerator.print(describe_cleared(output_dir, *clear_previous_run(output_dir)))
        # Listed before they are written: --overwrite_output_dir removes what this run wrote, and nothing else.
        record_run_entries(output_dir, RUN_START_ENTRIES, kind="train",
                           resumed_from=resume_path and os.path.abspath(resume_path))
        for name in remove_publish_leftovers(output_dir) + remove_temporary(checkpoint_dir(output_dir)):
            logger.warning("Removed %s, left unfinished by a killed run.", name)
        os.makedirs(checkpoint_dir(output_dir), exist_ok=True)
    accelerator.wait_for_everyone()

    # Steps: --num_epochs (when given) counts passes over the training split.
    effective_batch = train_args.batch_size * accelerator.num_processes * train_args.gradient_accumulation_steps
    num_train = (dataset_info.get("num_examples") or {}).get("train")
    max_steps = train_args.max_steps
    if train_args.num_epochs is not None:
        if not num_train:
            raise ValueError(f"--num_epochs needs the size of the training split, and {data_args.dataset!r} does "
                             f"not tell it: expected --max_steps instead.")
        batches_per_epoch = num_train // accelerator.num_processes // train_args.batch_size
        max_steps = max(1, int(train_args.num_epochs * batches_per_epoch / train_args.gradient_accumulation_steps))
    warmup_steps = resolved_warmup_steps(train_args, max_steps)
    threads = _apply_thread_policy(train_args, model, accelerator.device)
    accelerator.print(_startup_banner(train_args, data_args, model, dataset_info, output_dir, max_steps,
                                      warmup_steps, effective_batch, accelerator.num_processes, autoencoder,
                                      recipe_applied, threads))

    # -- 3. optimisers, schedules, EMA ---------------------------------------------------------------------
    discriminator_params = objective.discriminator_parameters()
    adversarial = bool(discriminator_params)
    # Adam's betas: (0.5, 0.9) for GAN training as in latent diffusion, unless the objective names the generator's
    # (the FactorVAE's VAE keeps (0.9, 0.999) while its discriminator gets (0.5, 0.9), as in Kim & Mnih).
    default_betas = getattr(objective, "generator_betas", None) or ((0.5, 0.9) if adversarial else (0.9, 0.999))
    betas = (train_args.adam_beta1 if train_args.adam_beta1 is not None else default_betas[0],
             train_args.adam_beta2 if train_args.adam_beta2 is not None else default_betas[1])
    disc_betas = (train_args.adam_beta1 if train_args.adam_beta1 is not None else 0.5,
                  train_args.adam_beta2 if train_args.adam_beta2 is not None else 0.9)
    generator_params = [p for p in model.parameters() if p.requires_grad] + objective.extra_parameters()
    optimizer = _adam(generator_params, train_args.learning_rate, betas, train_args.weight_decay,
                      accelerator.device)
    schedule = _lr_lambda(warmup_steps, max_steps, train_args.lr_scheduler, train_args.min_lr_ratio)
    # Schedulers are stepped by hand once per optimisation step (an Accelerate-prepared scheduler steps once
    # per process), and registered for checkpointing below.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    disc_optimizer = None
    disc_lr = train_args.disc_learning_rate or train_args.learning_rate
    if adversarial:
        # Its learning rate follows the same schedule, set from the step (it only steps after disc_start).
        disc_optimizer = accelerator.prepare(_adam(discriminator_params, disc_lr, disc_betas, train_args.weight_decay,
                                                   accelerator.device))
    ema = EMA(unwrapped, train_args.ema_decay) if train_args.ema_decay > 0 else None
    state = TrainingState(accelerator.num_processes)
    # What a checkpoint holds besides the weights (safetensors + JSON; see checkpointing.py).
    checkpointed = {"training_state": state, "scheduler": scheduler, "optimizer": optimizer, "objective": objective}
    checkpointed.update({name: part for name, part in (("disc_optimizer", disc_optimizer), ("ema", ema),
                                                        ("grad_scaler", accelerator.scaler)) if part is not None})

    run_args = {**dataclasses.asdict(train_args), **dataclasses.asdict(data_args), "model_config": model_config,
                "recipe": recipe_applied, "output_dir": output_dir, "resolved": {"max_steps": max_steps, "warmup_steps": warmup_steps,
                                                        "effective_batch_size": effective_batch,
                                                        "num_processes": accelerator.num_processes,
                                                        "mixed_precision": accelerator.mixed_precision,
                                                        "value_range": list(settings["value_range"]),
                                                        "binarize": settings["binarize"],
                                                        "dequantize": settings["dequantize"],
                                                        "frozen_modules": frozen_modules}}
    if source is not None:
        run_args["pretrained"] = source.record()
    if is_main:
        write_json_atomic(_jsonable(run_args), os.path.join(output_dir, "training_args.json"))
    accelerator.init_trackers("train", config=_tracker_config({k: v for k, v in run_args.items() if k != "resolved"}))

    # -- 4. resume ------------------------------------------------------------------------------------------
    if resume_path is not None:
        load_checkpoint(accelerator, resume_path, unwrapped, checkpointed, verified=True)
        if is_main and os.path.dirname(os.path.abspath(resume_path)) == os.path.abspath(checkpoint_dir(output_dir)):
            set_aside_newer(checkpoint_dir(output_dir), state.step)
        if getattr(state, "resharded_from", None):
            logger.warning("Checkpoint written by %d processes, resumed on %d: the data order differs from an "
                           "uninterrupted run.", state.resharded_from, accelerator.num_processes)
        overrides = apply_resume_overrides(state.step, max_steps, train_args.learning_rate, scheduler)
        accelerator.print(f"Resumed from {resume_path} at step {state.step}, to --max_steps {max_steps}"
                          f"{'; ' + '; '.join(overrides) if overrides else ''}.")
    elif train_args.resume_from_checkpoint == "latest":
        accelerator.print(f"No checkpoint in {checkpoint_dir(output_dir)} yet: starting a new run.")
    if resume_path is None:
        # Training noise differs per process (posterior samples); restored from the checkpoint on resume.
        set_seed(train_args.seed * 7919 + 104729 * (accelerator.process_index + 1))
    stream = TrainStream(
        data_args.dataset, settings, batch_size=train_args.batch_size, seed=train_args.seed,
        data_seed=data_args.data_seed, process_index=accelerator.process_index,
        num_processes=accelerator.num_processes, shuffle_buffer=data_args.shuffle_buffer,
        num_workers=data_args.num_workers, require_labels=unwrapped.is_conditional,
        image_column=data_args.image_column, label_column=data_args.label_column, data_dir=data_args.data_dir,
        num_examples=data_args.num_train_examples, epoch=state.data_epochs[accelerator.process_index],
        batches=state.data_batches[accelerator.process_index], skip_bad_images=data_args.skip_bad_images,
        skipped_images=state.skipped_images[accelerator.process_index],
        pin_memory=accelerator.device.type == "cuda")
    batches = iter(stream)
    # Problems the end of the run would find (no evaluation split, no labels in it, unreadable first image) are
    # found now, before any step: one example of the evaluation split is read.
    try:
        _first_eval_batch(data_args.dataset, data_args.eval_split, settings, data_args, 1, unwrapped.is_conditional)
    except (ValueError, FileNotFoundError, KeyError) as error:
        raise ValueError(f"The evaluation split {data_args.eval_split!r} of {data_args.dataset!r}, used at the end "
                         f"of the run, cannot be read: {error}. Expected a dataset with that split (--eval_split "
                         f"NAME picks another); checked before the first step.") from None
    # Binarisation / dequantisation, drawn on the device from a per-step seed: a resumed run draws the same noise.
    # The stream's values need no per-forward check (and device sync) in the model; see inputs_checked_by_caller.
    vouched = getattr(unwrapped, "inputs_checked_by_caller", contextlib.nullcontext)
    # Accelerate's optimiser wrapper searches for an optional package (importlib) twice per step, which costs
    # about as much as a small model's fused Adam step; without a gradient scaler, off XLA, all it then does is
    # call the optimiser, so call the optimiser directly.
    # Its zero_grad inspects the optimiser's signature at every call (about 0.1 ms); the loop never uses
    # accelerator.accumulate, so it would always zero: call the optimiser's own.
    # optimizers_called: the model's, then the discriminator's when there is one.
    plain = accelerator.scaler is None and accelerator.distributed_type != "XLA"
    optimizers_called = [opt.optimizer if plain else opt for opt in (optimizer, disc_optimizer) if opt is not None]
    noise = BatchNoise(train_args.seed, accelerator.process_index, binarize=settings["binarize"],
                       dequantize=settings["dequantize"], value_range=settings["value_range"],
                       device=accelerator.device)

    def evaluation_model():
        """The weights that are evaluated and published: the EMA when on, else the live model. A prior is evaluated
        and published attached to its VQ-VAE (a copy of it, which evaluation may switch to eval mode)."""
        if ema is None and autoencoder is None:
            return unwrapped
        averaged = copy.deepcopy(unwrapped)
        if ema is not None:
            ema.copy_to(averaged)
        return averaged if autoencoder is None else autoencoder.attach_prior(averaged)

    def run_evaluation(max_examples, model_to_evaluate=None):
        # fork_rng: evaluation must not move the training RNG, or a resumed run would diverge.
        devices = [accelerator.device.index or 0] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return evaluate(model_to_evaluate or evaluation_model(), data_args.dataset, data_args.eval_split,
                            batch_size=train_args.eval_batch_size,
                            num_importance_samples=train_args.eval_importance_samples, max_examples=max_examples,
                            seed=train_args.seed, data_seed=data_args.data_seed, binarize=settings["binarize"],
                            dataset_kwargs=_dataset_kwargs(data_args),
                            accelerator=accelerator, progress=True,
                            num_examples=(dataset_info.get("num_examples") or {}).get(data_args.eval_split))

    saved_step = None  # the step of the last checkpoint this run wrote

    def checkpoint():
        nonlocal saved_step
        saved_step = state.step
        # Each process's data position goes into the state, which only the main process writes.
        position = torch.tensor([[stream.epoch, stream.batches, stream.skipped_images]], device=accelerator.device)
        positions = accelerator.gather(position).view(-1, 3).tolist()
        state.data_epochs = [int(e) for e, _, _ in positions]
        state.data_batches = [int(b) for _, b, _ in positions]
        state.skipped_images = [int(s) for _, _, s in positions]
        return save_checkpoint(accelerator, output_dir, state.step, unwrapped, checkpointed,
                               train_args.checkpoints_total_limit)

    # -- 5. the loop ------------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    accum = train_args.gradient_accumulation_steps
    clip = train_args.max_grad_norm
    window = _Window()
    # Only on a terminal: redirected to a file, its carriage returns and escape codes garble the log, which gets
    # one plain line per logging step instead.
    progress = tqdm(total=max_steps, initial=state.step,
                    disable=not accelerator.is_local_main_process or not sys.stderr.isatty(),
                    desc=f"{train_args.model} on {data_args.dataset}", dynamic_ncols=True, mininterval=0.5)
    train_time, start_step, tick = 0.0, state.step, time.perf_counter()
    last_logs: Dict[str, float] = {}
    try:
        while state.step < max_steps:
            step = state.step
            unwrapped.set_training_step(step)
            disc_on = adversarial and objective.discriminator_active(step)
            loss_sum = torch.zeros((), device=accelerator.device)
            micro_logs = []
            for micro in range(accum):
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
                batch = noise(batch, step, micro)
                # Gradients are all-reduced once per optimisation step, on the last micro-batch.
                sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                with sync:
                    with accelerator.autocast(), vouched():
                        loss, logs, output = objective.generator_loss(model, batch, step)
                    accelerator.backward(loss / accum)
                    if disc_on:
                        with accelerator.autocast():
                            d_loss, d_logs = objective.discriminator_loss(batch, output, step)
                        accelerator.backward(d_loss / accum)
                        logs.update(d_logs)
                loss_sum += loss.detach().float()
                micro_logs.append(logs)

            _average_gradients(objective.extra_parameters(), accelerator)
            if disc_on:
                _average_gradients(discriminator_params, accelerator)
            grad_norm = accelerator.clip_grad_norm_(generator_params, clip) if clip > 0 else None
            if disc_on and clip > 0:
                # Not accelerator.clip_grad_norm_ again: under fp16 the call above has already unscaled the
                # gradients of every optimiser, and a second unscale would raise.
                torch.nn.utils.clip_grad_norm_(discriminator_params, clip)

            # A NaN/inf loss on any process stops (or skips) the step on every process.
            bad = ~torch.isfinite(loss_sum)
            if grad_norm is not None and accelerator.mixed_precision != "fp16":  # fp16 overflow is the scaler's job
                bad = bad | ~torch.isfinite(torch.as_tensor(grad_norm, device=accelerator.device))
            bad = bad.float().reshape(1)
            if accelerator.num_processes > 1:
                bad = accelerator.reduce(bad, reduction="sum")
            if bad.item() > 0:
                if not train_args.skip_nonfinite:
                    last = latest_checkpoint(checkpoint_dir(output_dir))
                    raise NonFiniteLossError(
                        f"Non-finite loss at step {step + 1} (loss={float(loss_sum) / accum:.4g}"
                        f"{'' if grad_norm is None else f', grad_norm={float(grad_norm):.4g}'}). Last good "
                        f"checkpoint: {last or 'none (no checkpoint was written yet)'}. Resume from it with "
                        f"--resume_from_checkpoint latest (perhaps with a lower --learning_rate), or pass "
                        f"--skip_nonfinite to skip such batches.")
                state.skipped_batches += 1
                accelerator.print(f"Step {step + 1}: non-finite loss, batch skipped "
                                  f"({state.skipped_batches} so far).")
            else:
                for logs in micro_logs:  # only finite steps enter the logged averages
                    window.add(logs)
                optimizers_called[0].step()
                if disc_on:
                    for group in disc_optimizer.param_groups:
                        group["lr"] = disc_lr * schedule(step)
                    optimizers_called[1].step()
                if ema is not None:
                    ema.update(unwrapped)
            for opt in optimizers_called:
                opt.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            state.examples_seen += effective_batch
            progress.update(1)

            # -- logging, evaluation, checkpoints ---------------------------------------------------------
            if state.step % train_args.logging_steps == 0 or state.step == max_steps:
                last_logs = window.means(accelerator)
                last_logs["lr"] = scheduler.get_last_lr()[0]
                if grad_norm is not None:
                    last_logs["grad_norm"] = float(grad_norm)
                accelerator.log({f"train/{k}": v for k, v in last_logs.items()}, step=state.step)
                progress.set_postfix({k: f"{v:.4g}" for k, v in last_logs.items() if k != "lr"}, refresh=False)
                if progress.disable:
                    accelerator.print(f"step {state.step}/{max_steps}: " + ", ".join(
                        f"{k}={v:.4g}" for k, v in last_logs.items()))
            now = time.perf_counter()
            train_time += now - tick
            if train_args.eval_steps and state.step % train_args.eval_steps == 0 and state.step < max_steps:
                metrics = run_evaluation(train_args.eval_max_examples)
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
                progress.write(f"step {state.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if train_args.checkpointing_steps and state.step % train_args.checkpointing_steps == 0:
                checkpoint()
            tick = time.perf_counter()
        progress.close()

        # -- 6. the end: final checkpoint, evaluation, published model ------------------------------------------
        accelerator.wait_for_everyone()
        _check_replicas_agree(accelerator, {"model": list(unwrapped.parameters()),
                                            "discriminator": discriminator_params,
                                            "loss": objective.extra_parameters()})
        # Not when the loop has just saved this very step (max_steps a multiple of checkpointing_steps): nothing has
        # changed since, and a second save would only replace it.
        if saved_step != state.step:
            checkpoint()
        final_model = evaluation_model()
        density_components = components_to_fit(train_args.fit_latent_density, unwrapped)
        if density_components:  # ex-post density: `generate` samples from it (Ghosh et al. 2020)
            fit_on_training_data(final_model, data_args.dataset, settings, data_args, density_components,
                                 train_args.latent_density_examples, train_args.eval_batch_size, train_args.seed)
        metrics = run_evaluation(train_args.final_eval_max_examples)
        eval_skipped = int(metrics.pop("skipped_images", 0))
        record = metrics_record(train_args.model, data_args.dataset, data_args.eval_split, state.step, metrics)
        if data_args.skip_bad_images:
            record["skipped_images"] = {"train": sum(state.skipped_images), data_args.eval_split: eval_skipped}
        if source is not None:
            # Before and after: the starting model, with the run's config, on the same held-out images.
            start_model = source.load(config).to(accelerator.device)
            record["pretrained"] = {**source.record(), "train_modules": train_args.train_modules,
                                    "metrics": run_evaluation(train_args.final_eval_max_examples, start_model)}
            del start_model
        steps_run = state.step - start_step
        examples_per_second = steps_run * effective_batch / train_time if train_time > 0 else float("nan")
        if is_main:
            if source is not None:
                from .pretrained import restore_source_fields

                restore_source_fields(final_model, source, model_config)
            record_run_entries(output_dir, RUN_END_ENTRIES + (("vae",) if train_args.model == "klae" else ()))
            publish_pretrained(final_model, output_dir)
            if train_args.model == "klae":
                _publish_diffusers_copy(final_model, output_dir)
            write_json_atomic(record, os.path.join(output_dir, "metrics.json"))
            grid_batch = _first_eval_batch(data_args.dataset, data_args.eval_split, settings, data_args,
                                           max(1, train_args.num_sample_images // 2), unwrapped.is_conditional)
            _image_grids(final_model, grid_batch, settings, output_dir, train_args.num_sample_images,
                         train_args.seed)
            title = f"{train_args.model} on {data_args.dataset} ({data_args.eval_split}, step {state.step})"
            if source is not None:
                accelerator.print(format_comparison_table(record["pretrained"]["metrics"], metrics, title=title))
            else:
                accelerator.print(format_metrics_table(metrics, title=title))
            headline = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("nll", "neg_elbo", "psnr", "ssim", "codebook_usage")
                                 if k in metrics)
            accelerator.print(f"Done: {state.step} steps in {time.perf_counter() - run_start:.0f} s; "
                              f"{data_args.eval_split} {headline}; model, metrics.json, reconstructions.png and "
                              f"samples.png in {output_dir}")
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
        accelerator.wait_for_everyone()
        if train_args.push_to_hub and is_main:
            from ..integrations.hub import push_output_dir  # written separately; imported only when asked for

            push_output_dir(output_dir, hub_repo, token=None, private=train_args.hub_private)
        accelerator.wait_for_everyone()
    finally:
        progress.close()
        model = optimizer = disc_optimizer = None  # noqa: F841  (the DDP wrapper holds the process group)
        num_processes = accelerator.num_processes
        _shutdown(accelerator, failed=sys.exc_info()[0] is not None)
    record["train"] = {"output_dir": output_dir, "runtime_s": train_time, "steps": steps_run,
                       "examples_per_second": examples_per_second, "skipped_batches": state.skipped_batches,
                       "resumed_from": resume_path, "num_processes": num_processes, "last_logs": last_logs}
    return record


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The command line: parse arguments (flags, --config file, model config fields) and train."""
    from ..integrations.hub import HubPushError
    from ..utils.cli import quiet_progress_bars
    from .perceptual import PerceptualWeightsMissingError

    train_args, data_args, model_config = parse_command_line(argv)
    quiet_progress_bars()  # transformers' shard-writing bars: noise in the run's output and its logs
    try:
        return train(train_args, data_args, model_config)
    except (ValueError, FileNotFoundError, FileExistsError, PerceptualWeightsMissingError,
            NonFiniteLossError, HubPushError) as error:
        if debug_requested(argv):
            raise
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: one line saying how to continue, no traceback
        if debug_requested(argv):
            raise
        output_dir = train_args.output_dir or default_output_dir(train_args.model or "vae", data_args.dataset)
        print(f"train.py: interrupted. Continue from the last checkpoint in {output_dir}/checkpoints with the same "
              f"command and --resume_from_checkpoint latest.", file=sys.stderr)
        sys.exit(130)
