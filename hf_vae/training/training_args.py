"""The two dataclasses a training run is described by: `TrainArguments` (how to train) and `DataArguments` (what
to train on). Each field carries its --help text and group (`GROUPS`); `hf_vae.training.arguments` turns them into
the command line.

Standard library only: the command line builds its parser from these fields before torch is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Dict, Optional, Sequence

from ..families import DEFAULT_FAMILY, FAMILIES, get as get_family, importing, names as family_names

MODEL_NAMES = tuple(FAMILIES)


def _models(names) -> str:
    """Family names for a help text: "a" or "a / b"."""
    return " / ".join(names)


#: the families named in help texts, by what they do (the table declares it)
_CODE_PRIOR = _models(family_names(code_prior=True))
_COMPILABLE = _models(family_names(compilable=True))
_VQGAN = _models(family_names(quantized=True, code_prior=False))
_KL_ADVERSARIAL = _models(name for name, family in FAMILIES.items()
                          if family.objective == "objectives:build_adversarial_objective")
_FROM_DIFFUSERS = importing("diffusers").name
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("cosine", "constant")
REPORT_TO = ("auto", "tensorboard", "jsonl", "all", "none")
DISC_LOSSES = ("hinge", "vanilla")
PIXEL_LOSSES = ("l1", "l2")
TRAIN_MODULES = ("all", "decoder")  # hf_vae.training.pretrained.TRAIN_MODULES (kept here: --help imports nothing)
#: hf_vae.latent_density.LATENT_DENSITY_KINDS (kept here: --help imports nothing)
LATENT_DENSITY_KINDS = ("gmm", "two_stage", "maf", "iaf")

#: argument groups of --help, in order: key -> title. A field names its group in its metadata (`group=`).
MODEL, DATA, OPTIM, EVAL, CKPT, LOG, HUB, OBJ = "model", "data", "optim", "eval", "ckpt", "log", "hub", "objective"
PRETRAINED = "pretrained"
GROUPS: Dict[str, str] = {
    MODEL: "model and run",
    PRETRAINED: "starting from a pretrained model (fine-tuning)",
    DATA: "data",
    OPTIM: "optimisation",
    EVAL: "evaluation",
    CKPT: "checkpointing and resuming",
    LOG: "logging and images",
    HUB: "Hub",
    OBJ: "KLAE / VQGAN objective (perceptual and adversarial terms)",
}


def _help(text: str, group: Optional[str] = None, **extra) -> dict:
    """Field metadata: the --help text, its group in `GROUPS` and argparse extras (`choices=`, `metavar=`)."""
    return {"help": text, "group": group, **extra}



@dataclass
class TrainArguments:
    """How to train: model variant, optimisation, schedule, checkpoints, evaluation, logging, publishing."""

    model: Optional[str] = field(default=None, metadata=_help(
        f"Model variant, one of {', '.join(MODEL_NAMES)} (its training recipe fills the fields you do not give); "
        f"default {DEFAULT_FAMILY}, or with --pretrained_model_name_or_path the source's.",
        group=MODEL, choices=MODEL_NAMES, metavar="NAME"))
    vqvae: Optional[str] = field(default=None, metadata=_help(
        f"With --model {_CODE_PRIOR}: the trained VQ-VAE (a folder or Hub repo) whose code maps the prior (GPT-2 or "
        "PixelCNN, --prior_type) "
        "learns; "
        "the run publishes that VQ-VAE with the prior in prior/.", group=MODEL, metavar="DIR_OR_REPO"))
    output_dir: Optional[str] = field(default=None, metadata=_help(
        "Where the run is written (default outputs/<model>-<dataset>): config.json and model.safetensors at the "
        "root, metrics.json, training_args.json, reconstructions.png, samples.png, checkpoints/, logs/.", group=MODEL, metavar="DIR"))
    overwrite_output_dir: bool = field(default=False, metadata=_help(
        "Train into an --output_dir that holds another run's files, replacing them (its checkpoints are deleted). "
        "Without it such a folder is refused, unless --resume_from_checkpoint continues that run.", group=CKPT))
    config: Optional[str] = field(default=None, metadata=_help(
        "A JSON or YAML file of arguments (the same keys as the flags, model config fields included); flags "
        "given on the command line override it.", group=MODEL, metavar="FILE"))
    max_steps: Optional[int] = field(default=None, metadata=_help(
        "Number of optimisation steps (default: the model's recipe, listed at the end).", group=OPTIM))
    num_epochs: Optional[float] = field(default=None, metadata=_help(
        "Train for this many passes over the training split instead of --max_steps (needs a dataset of known "
        "size): max_steps = epochs * examples // (batch_size * processes * accumulation).", group=OPTIM))
    batch_size: Optional[int] = field(default=None, metadata=_help(
        "Examples per process per micro-batch (default: the model's recipe).", group=OPTIM))
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "Micro-batches per optimisation step (effective batch = batch_size * processes * this).", group=OPTIM))
    learning_rate: Optional[float] = field(default=None, metadata=_help(
        "Peak learning rate, Adam (default: the model's recipe).", group=OPTIM))
    lr_scheduler: str = field(default="cosine", metadata=_help(
        "Learning-rate schedule after the linear warm-up.", group=OPTIM, choices=LR_SCHEDULERS))
    warmup_steps: Optional[int] = field(default=None, metadata=_help(
        "Linear warm-up steps (default: 5 % of max_steps).", group=OPTIM))
    min_lr_ratio: float = field(default=0.0, metadata=_help("Final learning rate of the cosine, as a fraction of the peak.", group=OPTIM))
    adam_beta1: Optional[float] = field(default=None, metadata=_help(
        "Adam beta1 (default 0.9; 0.5 when a discriminator is trained, as in latent diffusion, unless the family's "
        "objective names its own, as pythae's adversarial families do).", group=OPTIM))
    adam_beta2: Optional[float] = field(default=None, metadata=_help(
        "Adam beta2 (default 0.999; 0.9 when a discriminator is trained, unless the objective names its own).", group=OPTIM))
    weight_decay: float = field(default=0.0, metadata=_help("Decoupled weight decay (AdamW); 0 is plain Adam.", group=OPTIM))
    max_grad_norm: float = field(default=1.0, metadata=_help("Clip the gradient norm to this (0 disables clipping).", group=OPTIM))
    ema_decay: float = field(default=0.0, metadata=_help(
        "Keep an exponential moving average of the weights with this decay (e.g. 0.999; 0 = off). When on, the "
        "averaged weights are evaluated and published.", group=OPTIM))
    seed: int = field(default=0, metadata=_help("Seed of the model initialisation, the data order and the noise.", group=MODEL))
    mixed_precision: str = field(default="no", metadata=_help(
        "fp16 needs an accelerator (CUDA/XPU/MPS) and falls back to 'no' without one; bf16 also runs on CPUs.",
        group=OPTIM, choices=MIXED_PRECISION))
    checkpointing_steps: int = field(default=500, metadata=_help(
        "Save the full training state to output_dir/checkpoints/checkpoint-<step> every N steps (0 = only at the end).", group=CKPT))
    checkpoints_total_limit: Optional[int] = field(default=3, metadata=_help(
        "Keep only the newest N checkpoints (None keeps all).", group=CKPT))
    resume_from_checkpoint: Optional[str] = field(default=None, metadata=_help(
        "'latest' (the newest complete checkpoint in output_dir/checkpoints; a fresh start if there is none) or "
        "the path of a checkpoint folder.", group=CKPT, metavar="{latest,PATH}"))
    eval_steps: Optional[int] = field(default=None, metadata=_help(
        "Evaluate every N steps (0 = only at the end; default: the model's recipe).", group=EVAL))
    eval_max_examples: Optional[int] = field(default=1000, metadata=_help(
        "Examples used by the periodic evaluations (the first ones of the split).", group=EVAL))
    final_eval_max_examples: Optional[int] = field(default=None, metadata=_help(
        "Examples used by the final evaluation that writes metrics.json (default: the whole split).", group=EVAL))
    eval_batch_size: int = field(default=128, metadata=_help("Batch size of the evaluations.", group=EVAL))
    eval_importance_samples: Optional[int] = field(default=None, metadata=_help(
        "Importance samples K of the NLL in the trainer's evaluations (0 skips it; default: the model's recipe; "
        "scripts/evaluate.py defaults to 1000).", group=EVAL))
    fit_latent_density: Optional[int] = field(default=None, metadata=_help(
        "After training, fit a Gaussian mixture with this many components to the training codes; `generate` then "
        "samples from it (default: the model config's latent_density_components, 10 for rae; 0 = none).",
        group=EVAL))
    latent_density_kind: str = field(default="gmm", metadata=_help(
        "The ex-post density fitted after training: gmm (the --fit_latent_density K-component mixture), two_stage "
        "(a second VAE on the codes, Dai & Wipf 2019), maf or iaf (autoregressive flows fitted by maximum "
        "likelihood). A kind other than gmm is fitted with its default sizes unless --fit_latent_density is 0.",
        group=EVAL, choices=LATENT_DENSITY_KINDS))
    latent_density_examples: int = field(default=10000, metadata=_help(
        "Training examples whose codes the ex-post density is fitted to.", group=EVAL))
    logging_steps: int = field(default=10, metadata=_help("Log averaged loss terms every N steps.", group=LOG))
    report_to: str = field(default="auto", metadata=_help(
        "Trackers: auto = TensorBoard when installed, otherwise JSON lines in logs/train/metrics.jsonl.", group=LOG,
        choices=REPORT_TO))
    skip_nonfinite: bool = field(default=False, metadata=_help(
        "Skip a batch whose loss or gradient is NaN/inf instead of stopping the run.", group=OPTIM))
    num_sample_images: int = field(default=64, metadata=_help("Images in samples.png (reconstructions.png: half).", group=LOG))
    push_to_hub: bool = field(default=False, metadata=_help("Upload output_dir to the Hub at the end (needs --hub_model_id).", group=HUB))
    hub_model_id: Optional[str] = field(default=None, metadata=_help("Hub repository id, e.g. user/vae-shapes.", group=HUB, metavar="ID"))
    hub_private: bool = field(default=False, metadata=_help("Create the Hub repository as private.", group=HUB))
    # -- the perceptual + adversarial objective (latent diffusion's always; a VQ-VAE's when asked: VQGAN) ------
    pixel_loss: Optional[str] = field(default=None, metadata=_help(
        "Pixel term of the KLAE/VQGAN objective (default: the KLAE config's, else l1).", group=OBJ,
        choices=PIXEL_LOSSES))
    perceptual_weight: Optional[float] = field(default=None, metadata=_help(
        f"Weight of the LPIPS term (default 1.0 for {_KL_ADVERSARIAL}; for {_VQGAN} a value > 0 switches on the "
        "VQGAN objective). "
        "Needs --lpips_weights; 0 trains without it.", group=OBJ))
    lpips_weights: Optional[str] = field(default=None, metadata=_help(
        "Folder of LPIPS weights in safetensors (see scripts/convert_lpips_weights.py).", group=OBJ, metavar="DIR"))
    disc_start: Optional[int] = field(default=None, metadata=_help(
        f"Step at which the PatchGAN discriminator switches on (default 50001 for {_KL_ADVERSARIAL} as in latent "
        f"diffusion's KL-f8; for {_VQGAN}, setting it switches on the VQGAN objective).", group=OBJ))
    disc_weight: float = field(default=0.5, metadata=_help(
        "Multiplies the adaptive GAN weight (0 trains no discriminator).", group=OBJ))
    disc_loss: str = field(default="hinge", metadata=_help("Discriminator loss.", group=OBJ, choices=DISC_LOSSES))
    disc_num_layers: int = field(default=3, metadata=_help(
        "PatchGAN depth; images need at least 3 * 2**layers pixels per side.", group=OBJ))
    disc_ndf: int = field(default=64, metadata=_help("Channels of the first discriminator layer.", group=OBJ))
    disc_learning_rate: Optional[float] = field(default=None, metadata=_help(
        "Discriminator learning rate (default: --learning_rate).", group=OBJ))
    logvar_init: float = field(default=0.0, metadata=_help(
        "Output log-variance of the KLAE NLL (rec / exp(logvar) + logvar); its initial value with --learn_logvar.",
        group=OBJ))
    learn_logvar: bool = field(default=False, metadata=_help(
        "Learn the KLAE NLL's log-variance. Off by default: latent diffusion keeps it at --logvar_init.", group=OBJ))
    codebook_weight: float = field(default=1.0, metadata=_help("Weight of the VQ terms in the VQGAN objective.", group=OBJ))
    # -- starting from a pretrained model (hf_vae.training.pretrained) --------------------------------------------
    pretrained_model_name_or_path: Optional[str] = field(default=None, metadata=_help(
        "Start from these weights instead of random ones: an hf_vae output folder or Hub repo (any variant), a "
        f"diffusers AutoencoderKL folder or Hub repo (-> {_FROM_DIFFUSERS}), or a latent-diffusion .safetensors "
        f"file (-> {importing('ldm').name}). "
        "--model is inferred; flags that change the architecture are refused; --resume_from_checkpoint wins.",
        group=PRETRAINED, metavar="SRC"))
    pretrained_subfolder: Optional[str] = field(default=None, metadata=_help(
        "Subfolder of the pretrained folder/repo that holds the model, e.g. vae in a Stable Diffusion pipeline.",
        group=PRETRAINED, metavar="DIR"))
    pretrained_revision: Optional[str] = field(default=None, metadata=_help(
        "Branch or commit of the pretrained Hub repo (default: main).", group=PRETRAINED, metavar="REV"))
    pretrained_config: Optional[str] = field(default=None, metadata=_help(
        "Architecture of a latent-diffusion .safetensors file: a diffusers/hf_vae config.json or latent "
        "diffusion's YAML (default: read off the weights' shapes).", group=PRETRAINED, metavar="FILE"))
    train_modules: str = field(default="all", metadata=_help(
        "Which weights train: decoder freezes the encoder and quant_conv, so the latent space stays exactly the "
        "pretrained one (how sd-vae-ft-ema/mse were made).", group=PRETRAINED, choices=TRAIN_MODULES))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute the conv blocks' activations in the backward pass: less memory for more compute.", group=OPTIM))
    num_threads: Optional[int] = field(default=None, metadata=_help(
        "Intra-op CPU threads (default: chosen from the model's FLOPs per step, the cores and the load on them; "
        "OMP_NUM_THREADS also sets it).", group=MODEL, metavar="N"))
    compile: bool = field(default=False, metadata=_help(
        f"--model {_COMPILABLE}: train through model.enable_fast_path() (on a GPU: channels-last, fused GroupNorm+SiLU, "
        "torch.compile of the encoder and decoder; on a CPU it keeps the default path).", group=MODEL))

    def __post_init__(self):
        for f in fields(self):  # inf / NaN would train silently wrong (or not at all)
            value = getattr(self, f.name)
            if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"Expected `{f.name}` to be a finite number, got {value!r}.")
        if self.model is None and self.pretrained_model_name_or_path is None:
            self.model = DEFAULT_FAMILY
        if self.model is not None:
            _choice("model", self.model, MODEL_NAMES)
        _choice("train_modules", self.train_modules, TRAIN_MODULES)
        if self.train_modules != "all" and self.pretrained_model_name_or_path is None:
            raise ValueError(f"--train_modules {self.train_modules} needs --pretrained_model_name_or_path: a "
                             f"randomly initialised encoder would stay random.")
        for name in ("pretrained_subfolder", "pretrained_revision", "pretrained_config"):
            if getattr(self, name) is not None and self.pretrained_model_name_or_path is None:
                raise ValueError(f"--{name} was given without --pretrained_model_name_or_path.")
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("report_to", self.report_to, REPORT_TO)
        _choice("disc_loss", self.disc_loss, DISC_LOSSES)
        _choice("latent_density_kind", self.latent_density_kind, LATENT_DENSITY_KINDS)
        if self.pixel_loss is not None:
            _choice("pixel_loss", self.pixel_loss, PIXEL_LOSSES)
        for name in ("gradient_accumulation_steps", "eval_batch_size", "logging_steps",
                     "disc_num_layers", "disc_ndf"):
            _positive_int(name, getattr(self, name))
        for name in ("checkpointing_steps", "num_sample_images"):
            _non_negative_int(name, getattr(self, name))
        for name in ("warmup_steps", "checkpoints_total_limit", "eval_max_examples", "final_eval_max_examples",
                     "eval_steps", "eval_importance_samples",
                     "disc_start"):
            value = getattr(self, name)
            if value is not None:
                _non_negative_int(name, value)
        for name, limit in UPPER_BOUNDS.items():  # a typo (1e9) is refused now, not by an out-of-memory kill
            _at_most(name, getattr(self, name), limit)
        if self.checkpoints_total_limit == 0:
            raise ValueError("Expected `checkpoints_total_limit` >= 1 or None, got 0.")
        if self.num_epochs is not None and not self.num_epochs > 0:
            raise ValueError(f"Expected `num_epochs` > 0, got {self.num_epochs!r}.")
        if self.num_threads is not None:
            _positive_int("num_threads", self.num_threads)
        if self.compile and self.model is not None and not get_family(self.model).capabilities.compilable:
            raise ValueError(f"--compile applies to --model {_COMPILABLE} (the model's enable_fast_path), got "
                             f"--model {self.model}.")
        for name in ("max_steps", "batch_size"):  # None: the recipe's
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"Expected `learning_rate` > 0, got {self.learning_rate!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"Expected `ema_decay` in [0, 1), got {self.ema_decay!r}.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"Expected `min_lr_ratio` in [0, 1], got {self.min_lr_ratio!r}.")
        if self.max_grad_norm < 0:
            raise ValueError(f"Expected `max_grad_norm` >= 0, got {self.max_grad_norm!r}.")
        if self.perceptual_weight is not None and self.perceptual_weight < 0:
            raise ValueError(f"Expected `perceptual_weight` >= 0, got {self.perceptual_weight!r}.")
        if self.disc_weight < 0:
            raise ValueError(f"Expected `disc_weight` >= 0, got {self.disc_weight!r}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("Expected --hub_model_id ID with --push_to_hub, got none.")
        code_prior = self.model is not None and get_family(self.model).capabilities.code_prior
        if code_prior and not self.vqvae:
            raise ValueError(f"--model {self.model} fits a prior to a trained VQ-VAE: expected --vqvae DIR_OR_REPO, "
                             f"got none.")
        if self.vqvae and not code_prior:
            raise ValueError(f"--vqvae applies to --model {_CODE_PRIOR}, got --model {self.model}.")


@dataclass
class DataArguments:
    """What to train on. Streams come from `hf_vae.data.build_dataset`."""

    dataset: str = field(default="shapes", metadata=_help(
        "'shapes' (procedural dSprites), 'fashion_mnist', 'photos' (scikit-image crops), a datasets id or a local "
        "path (image folder, data files or save_to_disk folder).", group=DATA))
    eval_split: str = field(default="test", metadata=_help("Split used by the evaluations.", group=DATA))
    image_column: Optional[str] = field(default=None, metadata=_help("Image column of a generic dataset.", group=DATA))
    label_column: Optional[str] = field(default=None, metadata=_help(f"Label column of a generic dataset ({_models(family_names(conditional=True))}).", group=DATA))
    data_dir: Optional[str] = field(default=None, metadata=_help("data_dir for datasets.load_dataset / Fashion-MNIST IDX files.", group=DATA, metavar="DIR"))
    binarize: Optional[bool] = field(default=None, metadata=_help(
        "Dynamic binarisation x ~ Bernoulli(intensity), fresh every epoch (default: on for Bernoulli decoders).", group=DATA))
    data_seed: int = field(default=0, metadata=_help(
        "Content of procedural datasets (shapes factors and held-out split, photo crops); keep it fixed across runs.", group=DATA))
    num_train_examples: Optional[int] = field(default=None, metadata=_help(
        "Size of the training split of a procedural dataset (shapes, photos): a prefix of the default stream.", group=DATA))
    shuffle_buffer: int = field(default=1000, metadata=_help("Size of the streaming shuffle buffer.", group=DATA))
    num_workers: Optional[int] = field(default=None, metadata=_help(
        "DataLoader worker processes per training process (default: 0 for shapes, photos and Fashion-MNIST, which "
        "stream whole batches from an Arrow cache; 1 to 4 for sources that decode images).", group=DATA))
    skip_bad_images: bool = field(default=False, metadata=_help(
        "Skip image files that cannot be read (truncated, corrupt, not an image), counting them in the log and in "
        "metrics.json; without it the first such file stops the run with its path.", group=DATA))

    def __post_init__(self):
        looks_like_path = str(self.dataset).startswith(("/", "./", "../", "~")) or os.sep + os.sep in str(self.dataset)
        if looks_like_path and not os.path.exists(os.path.expanduser(self.dataset)):
            raise FileNotFoundError(f"--dataset {self.dataset}: no such folder or file; expected an existing path, "
                                    f"a datasets id (user/name) or one of shapes, fashion_mnist, photos.")
        _positive_int("shuffle_buffer", self.shuffle_buffer)
        if self.num_workers is not None:
            _non_negative_int("num_workers", self.num_workers)
        if self.num_train_examples is not None:
            _positive_int("num_train_examples", self.num_train_examples)


def _choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"Expected `{name}` in {tuple(choices)}, got {value!r}.")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a positive int, got {value!r}.")


#: Upper bounds of the counts that size one allocation (a batch, a grid of samples, importance samples per image).
#: Far above any useful value; a value past one is a typo that would otherwise exhaust memory mid-run.
UPPER_BOUNDS: Dict[str, int] = {"batch_size": 65536, "eval_batch_size": 65536, "num_sample_images": 4096,
                                "eval_importance_samples": 100_000, "gradient_accumulation_steps": 65536}


def _at_most(name: str, value, limit: int) -> None:
    if value is not None and value > limit:
        raise ValueError(f"Expected `--{name}` <= {limit} (its limit), got {value}.")


def _non_negative_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Expected `{name}` to be an int >= 0, got {value!r}.")

