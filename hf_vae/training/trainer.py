"""One training loop for every hf_vae family, on `datasets` streams, through `accelerate.Accelerator`.

`train` reads from top to bottom in three parts:

    build_run       the Accelerator and output folder, the model and its objective, the optimisers, schedules and
                    EMA, the resumed state and the training stream (a `Run`)
    training_step   one optimisation step: accumulate gradients over micro-batches, clip, check for NaN/inf, step
    finish_run      the final checkpoint, evaluation on the held-out split, metrics.json, image grids, the published
                    model (config.json + model.safetensors, written atomically), optional push to the Hub

Between steps the loop logs, evaluates and checkpoints. The same command runs on one CPU, one GPU, or many GPUs and
machines (`accelerate launch`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import os
import re
import sys
import time
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
from ..configuration_base import ConfigFieldError
from ..families import DEFAULT_FAMILY, DIFFUSERS_COMPONENT, get as get_family
from .arguments import debug_requested, parse_command_line
from .checkpoint_format import TrainingState
from .checkpoint_store import (
    apply_resume_overrides,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    remove_temporary,
    resolve_resume,
    save_checkpoint,
    set_aside_newer,
)
from .config_fields import check_model_config
from .distributed import average_gradients, check_replicas_agree, cpu_only, resolve_mixed_precision, shutdown
from .ema import EMA
from .latent_density import density_to_fit, fit_on_training_data
from .objectives import build_objective
from .optimisation import LossWindow, adam, lr_lambda, resolved_warmup_steps
from .output_folder import (
    RUN_END_ENTRIES,
    RUN_START_ENTRIES,
    claim_output_dir,
    clear_previous_run,
    describe_cleared,
    record_run_entries,
)
from .publishing import publish_pretrained, remove_publish_leftovers
from .recipes import apply_recipe
from .run_outputs import (
    dataset_kwargs,
    first_eval_batch,
    image_grids,
    jsonable,
    publish_diffusers_copy,
    startup_banner,
    tracker_config,
)
from .streams import TrainStream
from .tracking import make_trackers
from .training_args import DataArguments, TrainArguments

logger = logging.getLogger("hf_vae.training")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite (and --skip_nonfinite was not set)."""


# ------------------------------------------------------------------------------------------------------------
# Helpers the loop calls (kept small; the loop itself is `train`)
# ------------------------------------------------------------------------------------------------------------


def default_output_dir(model: str, dataset: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(str(dataset))) or str(dataset))
    return os.path.join("outputs", f"{model}-{slug}")


def build_model_config(train_args: TrainArguments, data_args: DataArguments, model_config: Dict[str, Any],
                       dataset_info: Dict[str, Any], autoencoder=None):
    """The config of `train_args.model`: the user's fields, with the data's size and channels filled in (a code
    prior's codebook and code-map shape come from its `autoencoder`)."""
    family = get_family(train_args.model)
    config_class, capabilities = family.config_class, family.capabilities
    if capabilities.code_prior:
        from .priors import prior_config

        return prior_config(config_class, autoencoder, model_config, dataset_info, data_args.dataset)
    kwargs = dict(model_config)
    # diffusers' AutoencoderKL calls the image size `sample_size`; every family takes --image_size
    size_field = "sample_size" if capabilities.diffusers_twin else "image_size"
    image_size = kwargs.pop("sample_size", None) if capabilities.diffusers_twin else None
    image_size = kwargs.pop("image_size", image_size) if capabilities.diffusers_twin else kwargs.get("image_size")
    if image_size is None:
        image_size = dataset_info.get("image_size")
        if image_size is None:
            raise ValueError(f"Dataset {data_args.dataset!r} has no fixed image size: expected --image_size N "
                             f"(images are then resized and centre-cropped to N x N).")
    in_channels = kwargs.get("in_channels", dataset_info.get("in_channels"))
    kwargs["in_channels"] = in_channels
    kwargs[size_field] = image_size
    if capabilities.diffusers_twin:
        kwargs.setdefault("out_channels", in_channels)
        if train_args.pixel_loss is not None:
            if kwargs.get("pixel_loss", train_args.pixel_loss) != train_args.pixel_loss:
                raise ValueError(f"Conflicting pixel losses: --pixel_loss {train_args.pixel_loss} and the config "
                                 f"field pixel_loss={kwargs['pixel_loss']!r}; give one.")
            kwargs["pixel_loss"] = train_args.pixel_loss
    if "dataset_size" in inspect.signature(config_class.__init__).parameters and kwargs.get("dataset_size") is None:
        kwargs["dataset_size"] = (dataset_info.get("num_examples") or {}).get("train")  # the β-TCVAE needs N
    if capabilities.conditional and kwargs.get("condition_dim") is None:
        _check_classes(train_args.model, kwargs, dataset_info.get("num_classes"), data_args.dataset)
    try:
        return config_class(**kwargs)
    except TypeError as error:  # a field of the wrong type; the config's own checks raise ValueError
        raise ValueError(f"Bad model config for --model {train_args.model} ({config_class.__name__}): {error}; got "
                         f"{kwargs}.") from error


def _check_classes(model: str, kwargs: Dict[str, Any], found: Optional[int], dataset: str) -> None:
    """A class-conditional model's `num_classes`: the dataset's when not given, and never fewer than it has."""
    if kwargs.get("num_classes") is None:
        if found is None:
            raise ValueError(f"--model {model} needs class labels, but dataset {dataset!r} has none that its "
                             f"description shows (num_classes=None): expected a dataset with a label column "
                             f"(--label_column NAME) and --num_classes N.")
        kwargs["num_classes"] = found
    elif found is not None and kwargs["num_classes"] < found:
        raise ValueError(f"--num_classes {kwargs['num_classes']} is too small for dataset {dataset!r}, which has "
                         f"{found} classes.")


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


# ------------------------------------------------------------------------------------------------------------
# The run: build it, step it, finish it
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What a training run holds from its first step to its last: the arguments as resolved, the accelerator, the
    model and its objective, the optimisers and schedule, the data stream and the training state."""

    train_args: TrainArguments
    data_args: DataArguments
    model_config: Dict[str, Any]
    output_dir: str
    accelerator: Any
    source: Any  # the pretrained model the run starts from (--pretrained_model_name_or_path), or None
    autoencoder: Any  # the frozen autoencoder whose codes a code prior learns, or None
    dataset_info: Dict[str, Any]
    settings: Dict[str, Any]  # the data's range, binarisation and dequantisation (evaluation.data_settings)
    config: Any
    resume_path: Optional[str]
    hub_repo: Optional[str]
    max_steps: int = 0
    effective_batch: int = 0
    model: Any = None  # as prepared by the accelerator (DDP-wrapped with several processes)
    unwrapped: Any = None
    objective: Any = None
    optimizer: Any = None
    disc_optimizer: Any = None
    #: the optimisers stepped by the loop: the model's, then the discriminator's when there is one
    optimizers_called: List[Any] = dataclasses.field(default_factory=list)
    scheduler: Any = None
    schedule: Any = None
    disc_lr: float = 0.0
    generator_params: List[torch.nn.Parameter] = dataclasses.field(default_factory=list)
    discriminator_params: List[torch.nn.Parameter] = dataclasses.field(default_factory=list)
    ema: Optional[EMA] = None
    state: Optional[TrainingState] = None
    checkpointed: Dict[str, Any] = dataclasses.field(default_factory=dict)
    stream: Any = None
    batches: Any = None
    noise: Any = None
    #: the context in which the model skips its per-forward input checks (the stream's values are checked)
    inputs_checked_by_caller: Any = contextlib.nullcontext
    window: Any = None
    saved_step: Optional[int] = None  # the step of the last checkpoint this run wrote
    recipe_applied: Dict[str, Any] = dataclasses.field(default_factory=dict)  # what the recipe filled in
    previous_files: List[str] = dataclasses.field(default_factory=list)  # another run's files in output_dir
    frozen_modules: List[str] = dataclasses.field(default_factory=list)  # --train_modules
    warmup_steps: int = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def build_run(train_args: TrainArguments, data_args: DataArguments, model_config: Dict[str, Any]) -> Run:
    """Everything before the first step, in this order (the seeds see the same draws as ever):

    1. the arguments resolved (pretrained source, recipe), the Accelerator and the output folder
    2. the model, built from its config with the data's shape filled in, and its objective
    3. the optimisers, schedules and EMA, written down in training_args.json
    4. resume (weights, optimisers, schedules, RNGs and data position) and the training stream
    """
    run = _start(train_args, data_args, model_config)
    _build_model(run)
    _build_optimisers(run)
    _resume_and_stream(run)
    return run


def _start(train_args: TrainArguments, data_args: DataArguments, model_config: Dict[str, Any]) -> Run:
    """Resolve the arguments; set up the Accelerator and the output folder; describe the data; build the config."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    source = None
    if train_args.pretrained_model_name_or_path is not None:
        from .pretrained import check_requested_model, resolve_source

        source = resolve_source(train_args.pretrained_model_name_or_path, subfolder=train_args.pretrained_subfolder,
                                revision=train_args.pretrained_revision, config_file=train_args.pretrained_config)
        train_args = dataclasses.replace(train_args, model=check_requested_model(source, train_args.model))
    model_config = check_model_config(train_args.model, model_config or {})
    # The model's recipe fills every setting the user left open (configs/recipes/<model>.yaml; --help lists it).
    train_args, model_config, recipe_applied = apply_recipe(train_args, data_args, model_config,
                                                            pretrained=source is not None)
    output_dir = train_args.output_dir or default_output_dir(train_args.model, data_args.dataset)

    accelerator = Accelerator(
        cpu=cpu_only(),
        mixed_precision=resolve_mixed_precision(train_args.mixed_precision),
        log_with=make_trackers(train_args.report_to, os.path.join(output_dir, "logs")) or None,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, "logs")),
    )
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and int(launched) != accelerator.num_processes:
        raise RuntimeError(f"Launched as {launched} processes (WORLD_SIZE) but Accelerate set up "
                           f"{accelerator.num_processes}: the processes would train separately. Expected a "
                           f"distributed backend for this machine (see the README, 'Several GPUs and machines').")
    # Every process looks before any writes (the barrier below): a folder of another run is refused everywhere.
    previous_files = claim_output_dir(output_dir, train_args.overwrite_output_dir,
                                      train_args.resume_from_checkpoint)
    hub_repo = train_args.hub_model_id
    if train_args.push_to_hub and accelerator.is_main_process:  # a bad token or repository is found now, not after
        from ..integrations.hub import check_push_target

        hub_repo = check_push_target(train_args.hub_model_id, private=train_args.hub_private)
    accelerator.wait_for_everyone()

    # The data's description and the config (bad arguments fail here, before anything is written). A code prior
    # learns the code maps of a frozen autoencoder, which also fixes the data's size and range.
    autoencoder = None
    if get_family(train_args.model).capabilities.code_prior:
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

        check_fits_in_memory(get_family(train_args.model).model_class, config, train_args.batch_size,
                             accelerator.device)
    settings = data_settings(config if autoencoder is None else autoencoder.config, data_args.binarize)
    return Run(train_args, data_args, model_config, output_dir, accelerator, source, autoencoder, dataset_info,
               settings, config, resume_path, hub_repo, recipe_applied=recipe_applied, previous_files=previous_files)


def _build_model(run: Run) -> None:
    """The model (seeded: the same initial weights on every process), its frozen parts and its objective; the
    output folder's bookkeeping; the length of the run and the banner."""
    from accelerate.utils import set_seed

    train_args, accelerator = run.train_args, run.accelerator
    set_seed(train_args.seed)
    if run.source is not None and run.resume_path is None:
        model = run.source.load(run.config)  # a resumed fine-tune takes its weights from the checkpoint instead
        accelerator.print(f"Starting from {run.source.describe()}.")
    else:
        model = get_family(train_args.model).model_class(run.config)
    from .pretrained import freeze_modules

    run.frozen_modules = freeze_modules(model, train_args.train_modules)
    if train_args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    run.objective = build_objective(train_args, model, run.settings["value_range"], run.data_args.dataset,
                                    run.autoencoder)
    model.to(accelerator.device)
    run.objective.to(accelerator.device)
    if train_args.compile:
        model.enable_fast_path()
        on = [name for name in ("compile", "channels_last", "fuse_norms") if model.fast_path_settings[name]]
        accelerator.print(f"--compile: fast path on {accelerator.device.type}: "
                          f"{', '.join(on) if on else 'the default path (none of its pieces is faster on a CPU)'}.")
    output_dir = run.output_dir
    if run.is_main:
        if run.previous_files and train_args.overwrite_output_dir:
            accelerator.print(describe_cleared(output_dir, *clear_previous_run(output_dir)))
        # Listed before they are written: --overwrite_output_dir removes what this run wrote, and nothing else.
        record_run_entries(output_dir, RUN_START_ENTRIES, kind="train",
                           resumed_from=run.resume_path and os.path.abspath(run.resume_path))
        for name in remove_publish_leftovers(output_dir) + remove_temporary(checkpoint_dir(output_dir)):
            logger.warning("Removed %s, left unfinished by a killed run.", name)
        os.makedirs(checkpoint_dir(output_dir), exist_ok=True)
    accelerator.wait_for_everyone()

    # Steps: --num_epochs (when given) counts passes over the training split.
    run.effective_batch = train_args.batch_size * accelerator.num_processes * train_args.gradient_accumulation_steps
    num_train = (run.dataset_info.get("num_examples") or {}).get("train")
    run.max_steps = train_args.max_steps
    if train_args.num_epochs is not None:
        if not num_train:
            raise ValueError(f"--num_epochs needs the size of the training split, and {run.data_args.dataset!r} "
                             f"does not tell it: expected --max_steps instead.")
        batches_per_epoch = num_train // accelerator.num_processes // train_args.batch_size
        run.max_steps = max(1, int(train_args.num_epochs * batches_per_epoch / train_args.gradient_accumulation_steps))
    run.warmup_steps = resolved_warmup_steps(train_args, run.max_steps)
    threads = _apply_thread_policy(train_args, model, accelerator.device)
    accelerator.print(startup_banner(train_args, run.data_args, model, run.dataset_info, output_dir, run.max_steps,
                                      run.warmup_steps, run.effective_batch, accelerator.num_processes,
                                      run.autoencoder, run.recipe_applied, threads))
    run.model = model


def _build_optimisers(run: Run) -> None:
    """Adam for the model (and the objective's own parameters), Adam for a discriminator, the schedule, the EMA and
    the training state; training_args.json and the trackers' config."""
    train_args, accelerator, objective = run.train_args, run.accelerator, run.objective
    run.discriminator_params = objective.discriminator_parameters()
    adversarial = bool(run.discriminator_params)
    # Adam's betas: (0.5, 0.9) for GAN training as in latent diffusion, unless the objective names the generator's
    # (the FactorVAE's VAE keeps (0.9, 0.999) while its discriminator gets (0.5, 0.9), as in Kim & Mnih).
    default_betas = objective.generator_betas or ((0.5, 0.9) if adversarial else (0.9, 0.999))
    betas = (train_args.adam_beta1 if train_args.adam_beta1 is not None else default_betas[0],
             train_args.adam_beta2 if train_args.adam_beta2 is not None else default_betas[1])
    disc_betas = (train_args.adam_beta1 if train_args.adam_beta1 is not None else objective.discriminator_betas[0],
                  train_args.adam_beta2 if train_args.adam_beta2 is not None else objective.discriminator_betas[1])
    run.generator_params = [p for p in run.model.parameters() if p.requires_grad] + objective.extra_parameters()
    optimizer = adam(run.generator_params, train_args.learning_rate, betas, train_args.weight_decay,
                      accelerator.device)
    run.schedule = lr_lambda(run.warmup_steps, run.max_steps, train_args.lr_scheduler, train_args.min_lr_ratio)
    # Schedulers are stepped by hand once per optimisation step (an Accelerate-prepared scheduler steps once
    # per process), and registered for checkpointing below.
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, run.schedule)
    run.model, run.optimizer = accelerator.prepare(run.model, optimizer)
    run.unwrapped = accelerator.unwrap_model(run.model)
    run.disc_lr = train_args.disc_learning_rate or train_args.learning_rate
    if adversarial:
        # Its learning rate follows the same schedule, set from the step (it only steps after disc_start).
        run.disc_optimizer = accelerator.prepare(adam(run.discriminator_params, run.disc_lr, disc_betas,
                                                       train_args.weight_decay, accelerator.device))
    run.ema = EMA(run.unwrapped, train_args.ema_decay) if train_args.ema_decay > 0 else None
    run.state = TrainingState(accelerator.num_processes)
    # What a checkpoint holds besides the weights (safetensors + JSON; see checkpointing.py).
    run.checkpointed = {"training_state": run.state, "scheduler": run.scheduler, "optimizer": run.optimizer,
                        "objective": objective}
    run.checkpointed.update({name: part for name, part in (("disc_optimizer", run.disc_optimizer), ("ema", run.ema),
                                                           ("grad_scaler", accelerator.scaler)) if part is not None})
    settings = run.settings
    run_args = {**dataclasses.asdict(train_args), **dataclasses.asdict(run.data_args),
                "model_config": run.model_config, "recipe": run.recipe_applied, "output_dir": run.output_dir,
                "resolved": {"max_steps": run.max_steps, "warmup_steps": run.warmup_steps,
                             "effective_batch_size": run.effective_batch, "num_processes": accelerator.num_processes,
                             "mixed_precision": accelerator.mixed_precision,
                             "value_range": list(settings["value_range"]), "binarize": settings["binarize"],
                             "dequantize": settings["dequantize"], "frozen_modules": run.frozen_modules}}
    if run.source is not None:
        run_args["pretrained"] = run.source.record()
    if run.is_main:
        write_json_atomic(jsonable(run_args), os.path.join(run.output_dir, "training_args.json"))
    accelerator.init_trackers("train", config=tracker_config({k: v for k, v in run_args.items() if k != "resolved"}))


def _resume_and_stream(run: Run) -> None:
    """Restore the newest checkpoint (or seed the training noise), then open the training stream where the state
    says, check the evaluation split, and set up the per-step noise."""
    from accelerate.utils import set_seed

    train_args, data_args, accelerator, state = run.train_args, run.data_args, run.accelerator, run.state
    output_dir, resume_path, settings = run.output_dir, run.resume_path, run.settings
    if resume_path is not None:
        load_checkpoint(accelerator, resume_path, run.unwrapped, run.checkpointed, verified=True)
        if run.is_main and os.path.dirname(os.path.abspath(resume_path)) == os.path.abspath(checkpoint_dir(output_dir)):
            set_aside_newer(checkpoint_dir(output_dir), state.step)
        if state.resharded_from:
            logger.warning("Checkpoint written by %d processes, resumed on %d: the data order differs from an "
                           "uninterrupted run.", state.resharded_from, accelerator.num_processes)
        overrides = apply_resume_overrides(state.step, run.max_steps, train_args.learning_rate, run.scheduler)
        accelerator.print(f"Resumed from {resume_path} at step {state.step}, to --max_steps {run.max_steps}"
                          f"{'; ' + '; '.join(overrides) if overrides else ''}.")
    elif train_args.resume_from_checkpoint == "latest":
        accelerator.print(f"No checkpoint in {checkpoint_dir(output_dir)} yet: starting a new run.")
    if resume_path is None:
        # Training noise differs per process (posterior samples); restored from the checkpoint on resume.
        set_seed(train_args.seed * 7919 + 104729 * (accelerator.process_index + 1))
    process = accelerator.process_index
    conditional = run.unwrapped.is_conditional
    run.stream = TrainStream(
        data_args.dataset, settings, batch_size=train_args.batch_size, seed=train_args.seed,
        data_seed=data_args.data_seed, process_index=process, num_processes=accelerator.num_processes,
        shuffle_buffer=data_args.shuffle_buffer, num_workers=data_args.num_workers, require_labels=conditional,
        image_column=data_args.image_column, label_column=data_args.label_column, data_dir=data_args.data_dir,
        num_examples=data_args.num_train_examples, epoch=state.data_epochs[process],
        batches=state.data_batches[process], skip_bad_images=data_args.skip_bad_images,
        skipped_images=state.skipped_images[process], pin_memory=accelerator.device.type == "cuda")
    run.batches = iter(run.stream)
    # Problems the end of the run would find (no evaluation split, no labels in it, unreadable first image) are
    # found now, before any step: one example of the evaluation split is read.
    try:
        first_eval_batch(data_args.dataset, data_args.eval_split, settings, data_args, 1, conditional)
    except (ValueError, FileNotFoundError, KeyError) as error:
        raise ValueError(f"The evaluation split {data_args.eval_split!r} of {data_args.dataset!r}, used at the end "
                         f"of the run, cannot be read: {error}. Expected a dataset with that split (--eval_split "
                         f"NAME picks another); checked before the first step.") from None
    # The stream's values need no per-forward check (and device sync) in the model; see inputs_checked_by_caller.
    # A code prior reads codes, not images: it has no such check.
    if not get_family(train_args.model).capabilities.code_prior:
        run.inputs_checked_by_caller = run.unwrapped.inputs_checked_by_caller
    # Accelerate's optimiser wrapper searches for an optional package (importlib) twice per step, which costs
    # about as much as a small model's fused Adam step; without a gradient scaler, off XLA, all it then does is
    # call the optimiser, so call the optimiser directly.
    # Its zero_grad inspects the optimiser's signature at every call (about 0.1 ms); the loop never uses
    # accelerator.accumulate, so it would always zero: call the optimiser's own.
    plain = accelerator.scaler is None and accelerator.distributed_type != "XLA"
    run.optimizers_called = [opt.optimizer if plain else opt for opt in (run.optimizer, run.disc_optimizer)
                             if opt is not None]
    # Binarisation / dequantisation, drawn on the device from a per-step seed: a resumed run draws the same noise.
    run.noise = BatchNoise(train_args.seed, process, binarize=settings["binarize"],
                           dequantize=settings["dequantize"], value_range=settings["value_range"],
                           device=accelerator.device)
    run.window = LossWindow()


def training_step(run: Run) -> Optional[torch.Tensor]:
    """One optimisation step: accumulate gradients over the micro-batches, average what DDP does not, clip, stop
    (or skip) on a NaN/inf, step the optimisers, the EMA and the schedule. Returns the gradient norm (None
    without clipping)."""
    train_args, accelerator, objective, state = run.train_args, run.accelerator, run.objective, run.state
    accum, clip = train_args.gradient_accumulation_steps, train_args.max_grad_norm
    step = state.step
    run.unwrapped.set_training_step(step)
    disc_on = bool(run.discriminator_params) and objective.discriminator_active(step)
    loss_sum = torch.zeros((), device=accelerator.device)
    micro_logs = []
    for micro in range(accum):
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(run.batches).items()}
        batch = run.noise(batch, step, micro)
        # Gradients are all-reduced once per optimisation step, on the last micro-batch.
        sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(run.model)
        with sync:
            with accelerator.autocast(), run.inputs_checked_by_caller():
                loss, logs, output = objective.generator_loss(run.model, batch, step)
            accelerator.backward(loss / accum)
            if disc_on:
                with accelerator.autocast():
                    d_loss, d_logs = objective.discriminator_loss(batch, output, step)
                accelerator.backward(d_loss / accum)
                logs.update(d_logs)
        loss_sum += loss.detach().float()
        micro_logs.append(logs)

    average_gradients(objective.extra_parameters(), accelerator)
    if disc_on:
        average_gradients(run.discriminator_params, accelerator)
    grad_norm = accelerator.clip_grad_norm_(run.generator_params, clip) if clip > 0 else None
    if disc_on and clip > 0:
        # Not accelerator.clip_grad_norm_ again: under fp16 the call above has already unscaled the gradients of
        # every optimiser, and a second unscale would raise.
        torch.nn.utils.clip_grad_norm_(run.discriminator_params, clip)

    if _non_finite(run, loss_sum, grad_norm):
        if not train_args.skip_nonfinite:
            last = latest_checkpoint(checkpoint_dir(run.output_dir))
            raise NonFiniteLossError(
                f"Non-finite loss at step {step + 1} (loss={float(loss_sum) / accum:.4g}"
                f"{'' if grad_norm is None else f', grad_norm={float(grad_norm):.4g}'}). Last good "
                f"checkpoint: {last or 'none (no checkpoint was written yet)'}. Resume from it with "
                f"--resume_from_checkpoint latest (perhaps with a lower --learning_rate), or pass "
                f"--skip_nonfinite to skip such batches.")
        state.skipped_batches += 1
        accelerator.print(f"Step {step + 1}: non-finite loss, batch skipped ({state.skipped_batches} so far).")
    else:
        for logs in micro_logs:  # only finite steps enter the logged averages
            run.window.add(logs)
        run.optimizers_called[0].step()
        if disc_on:
            for group in run.disc_optimizer.param_groups:
                group["lr"] = run.disc_lr * run.schedule(step)
            run.optimizers_called[1].step()
        if run.ema is not None:
            run.ema.update(run.unwrapped)
    for opt in run.optimizers_called:
        opt.zero_grad(set_to_none=True)
    run.scheduler.step()
    state.step += 1
    state.examples_seen += run.effective_batch
    return grad_norm


def _non_finite(run: Run, loss_sum: torch.Tensor, grad_norm) -> bool:
    """A NaN/inf loss (or gradient) on any process stops (or skips) the step on every process."""
    accelerator = run.accelerator
    bad = ~torch.isfinite(loss_sum)
    if grad_norm is not None and accelerator.mixed_precision != "fp16":  # fp16 overflow is the scaler's job
        bad = bad | ~torch.isfinite(torch.as_tensor(grad_norm, device=accelerator.device))
    bad = bad.float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bad.item() > 0


def _log(run: Run, grad_norm, progress) -> Dict[str, float]:
    """The averaged loss terms since the last log line, to the trackers and the progress bar (or a plain line)."""
    logs = run.window.means(run.accelerator)
    logs["lr"] = run.scheduler.get_last_lr()[0]
    if grad_norm is not None:
        logs["grad_norm"] = float(grad_norm)
    run.accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=run.state.step)
    progress.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"}, refresh=False)
    if progress.disable:
        run.accelerator.print(f"step {run.state.step}/{run.max_steps}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in logs.items()))
    return logs


def evaluation_model(run: Run):
    """The weights that are evaluated and published: the EMA when on, else the live model. A code prior is
    evaluated and published attached to its autoencoder (a copy of it, which evaluation may switch to eval mode)."""
    if run.ema is None and run.autoencoder is None:
        return run.unwrapped
    averaged = copy.deepcopy(run.unwrapped)
    if run.ema is not None:
        run.ema.copy_to(averaged)
    return averaged if run.autoencoder is None else run.autoencoder.attach_prior(averaged)


def evaluate_run(run: Run, max_examples: Optional[int], model=None) -> Dict[str, float]:
    """The metrics of `model` (default: `evaluation_model`) on the evaluation split."""
    train_args, data_args, accelerator = run.train_args, run.data_args, run.accelerator
    # fork_rng: evaluation must not move the training RNG, or a resumed run would diverge.
    devices = [accelerator.device.index or 0] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return evaluate(model or evaluation_model(run), data_args.dataset, data_args.eval_split,
                        batch_size=train_args.eval_batch_size,
                        num_importance_samples=train_args.eval_importance_samples, max_examples=max_examples,
                        seed=train_args.seed, data_seed=data_args.data_seed, binarize=run.settings["binarize"],
                        dataset_kwargs=dataset_kwargs(data_args), accelerator=accelerator, progress=True,
                        num_examples=(run.dataset_info.get("num_examples") or {}).get(data_args.eval_split))


def save_run_checkpoint(run: Run) -> str:
    """Write checkpoint-<step>: the weights and everything in `run.checkpointed`, with every process's data
    position (gathered: only the main process writes)."""
    state, accelerator, stream = run.state, run.accelerator, run.stream
    run.saved_step = state.step
    position = torch.tensor([[stream.epoch, stream.batches, stream.skipped_images]], device=accelerator.device)
    positions = accelerator.gather(position).view(-1, 3).tolist()
    state.data_epochs = [int(e) for e, _, _ in positions]
    state.data_batches = [int(b) for _, b, _ in positions]
    state.skipped_images = [int(s) for _, _, s in positions]
    return save_checkpoint(accelerator, run.output_dir, state.step, run.unwrapped, run.checkpointed,
                           run.train_args.checkpoints_total_limit)


def finish_run(run: Run, run_start: float, train_time: float) -> Dict[str, Any]:
    """After the last step: the final checkpoint, the ex-post latent density, the evaluation on the held-out split
    (metrics.json), the published model and image grids, the summary, and the push to the Hub when asked."""
    train_args, data_args, accelerator, state = run.train_args, run.data_args, run.accelerator, run.state
    output_dir, source, family = run.output_dir, run.source, get_family(train_args.model)
    accelerator.wait_for_everyone()
    check_replicas_agree(accelerator, {"model": list(run.unwrapped.parameters()),
                                        "discriminator": run.discriminator_params,
                                        "loss": run.objective.extra_parameters()})
    # Not when the loop has just saved this very step (max_steps a multiple of checkpointing_steps): nothing has
    # changed since, and a second save would only replace it.
    if run.saved_step != state.step:
        save_run_checkpoint(run)
    final_model = evaluation_model(run)
    density = density_to_fit(train_args.fit_latent_density, train_args.latent_density_kind, run.unwrapped)
    if density is not None:  # ex-post density: `generate` samples from it (Ghosh et al. 2020)
        kind, density_components = density
        fit_on_training_data(final_model, data_args.dataset, run.settings, data_args, density_components,
                             train_args.latent_density_examples, train_args.eval_batch_size, train_args.seed, kind)
    metrics = evaluate_run(run, train_args.final_eval_max_examples)
    eval_skipped = int(metrics.pop("skipped_images", 0))
    record = metrics_record(train_args.model, data_args.dataset, data_args.eval_split, state.step, metrics)
    if data_args.skip_bad_images:
        record["skipped_images"] = {"train": sum(state.skipped_images), data_args.eval_split: eval_skipped}
    if source is not None:
        # Before and after: the starting model, with the run's config, on the same held-out images.
        start_model = source.load(run.config).to(accelerator.device)
        record["pretrained"] = {**source.record(), "train_modules": train_args.train_modules,
                                "metrics": evaluate_run(run, train_args.final_eval_max_examples, start_model)}
        del start_model
    if run.is_main:
        if source is not None:
            from .pretrained import restore_source_fields

            restore_source_fields(final_model, source, run.model_config)
        twin = family.capabilities.diffusers_twin  # its output folder also holds the diffusers copy
        record_run_entries(output_dir, RUN_END_ENTRIES + ((DIFFUSERS_COMPONENT,) if twin else ()))
        publish_pretrained(final_model, output_dir)
        if twin:
            publish_diffusers_copy(final_model, output_dir)
        write_json_atomic(record, os.path.join(output_dir, "metrics.json"))
        grid_batch = first_eval_batch(data_args.dataset, data_args.eval_split, run.settings, data_args,
                                       max(1, train_args.num_sample_images // 2), run.unwrapped.is_conditional)
        image_grids(final_model, grid_batch, run.settings, output_dir, train_args.num_sample_images,
                     train_args.seed)
        _print_summary(run, record, metrics, run_start)
    accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
    accelerator.wait_for_everyone()
    if train_args.push_to_hub and run.is_main:
        from ..integrations.hub import push_output_dir  # written separately; imported only when asked for

        push_output_dir(output_dir, run.hub_repo, token=None, private=train_args.hub_private)
    accelerator.wait_for_everyone()
    return record


def _print_summary(run: Run, record: Dict[str, Any], metrics: Dict[str, float], run_start: float) -> None:
    train_args, data_args = run.train_args, run.data_args
    title = f"{train_args.model} on {data_args.dataset} ({data_args.eval_split}, step {run.state.step})"
    if run.source is not None:
        run.accelerator.print(format_comparison_table(record["pretrained"]["metrics"], metrics, title=title))
    else:
        run.accelerator.print(format_metrics_table(metrics, title=title))
    headline = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("nll", "neg_elbo", "psnr", "ssim", "codebook_usage")
                         if k in metrics)
    run.accelerator.print(f"Done: {run.state.step} steps in {time.perf_counter() - run_start:.0f} s; "
                          f"{data_args.eval_split} {headline}; model, metrics.json, reconstructions.png and "
                          f"samples.png in {run.output_dir}")


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
    from tqdm.auto import tqdm

    run_start = time.perf_counter()
    run = build_run(train_args or TrainArguments(), data_args or DataArguments(), model_config)
    train_args, accelerator, state = run.train_args, run.accelerator, run.state
    # Only on a terminal: redirected to a file, its carriage returns and escape codes garble the log, which gets
    # one plain line per logging step instead.
    progress = tqdm(total=run.max_steps, initial=state.step,
                    disable=not accelerator.is_local_main_process or not sys.stderr.isatty(),
                    desc=f"{train_args.model} on {run.data_args.dataset}", dynamic_ncols=True, mininterval=0.5)
    train_time, start_step, tick = 0.0, state.step, time.perf_counter()
    last_logs: Dict[str, float] = {}
    try:
        while state.step < run.max_steps:
            grad_norm = training_step(run)
            progress.update(1)
            if state.step % train_args.logging_steps == 0 or state.step == run.max_steps:
                last_logs = _log(run, grad_norm, progress)
            now = time.perf_counter()
            train_time += now - tick
            if train_args.eval_steps and state.step % train_args.eval_steps == 0 and state.step < run.max_steps:
                metrics = evaluate_run(run, train_args.eval_max_examples)
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
                progress.write(f"step {state.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if train_args.checkpointing_steps and state.step % train_args.checkpointing_steps == 0:
                save_run_checkpoint(run)
            tick = time.perf_counter()
        progress.close()
        record = finish_run(run, run_start, train_time)
        steps_run = state.step - start_step
        examples_per_second = steps_run * run.effective_batch / train_time if train_time > 0 else float("nan")
    finally:
        progress.close()
        run.model = run.optimizer = run.disc_optimizer = None  # the DDP wrapper holds the process group
        run.checkpointed = {}
        run.optimizers_called = []
        num_processes = accelerator.num_processes
        shutdown(accelerator, failed=sys.exc_info()[0] is not None)
    record["train"] = {"output_dir": run.output_dir, "runtime_s": train_time, "steps": steps_run,
                       "examples_per_second": examples_per_second, "skipped_batches": state.skipped_batches,
                       "resumed_from": run.resume_path, "num_processes": num_processes, "last_logs": last_logs}
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
    except ConfigFieldError as error:  # a value the command line or its --config file gave: a usage error
        if debug_requested(argv):
            raise
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, FileNotFoundError, FileExistsError, PerceptualWeightsMissingError,
            NonFiniteLossError, HubPushError) as error:
        if debug_requested(argv):
            raise
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: one line saying how to continue, no traceback
        if debug_requested(argv):
            raise
        output_dir = train_args.output_dir or default_output_dir(train_args.model or DEFAULT_FAMILY, data_args.dataset)
        print(f"train.py: interrupted. Continue from the last checkpoint in {output_dir}/checkpoints with the same "
              f"command and --resume_from_checkpoint latest.", file=sys.stderr)
        sys.exit(130)
