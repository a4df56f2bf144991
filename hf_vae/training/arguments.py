"""The trainer's arguments: two dataclasses, a model-config dict, and the command line that fills them.

    python scripts/train.py --model vae --dataset shapes --max_steps 2000 --latent_dim 10 --config run.yaml

`TrainArguments` and `DataArguments` become argparse flags, in the groups of `GROUPS`; every other
`--name value` pair must be a field of the chosen model's config (`--latent_dim 10`, `--block_out_channels 32 64`,
`--beta 4`) and goes to the config constructor. `--config FILE.json|yaml` holds the same keys; flags given on
the command line win over the file.

This module imports only the standard library at module level (yaml when a value or file is parsed): the
command line is parsed, and `--help` answered, before torch and transformers are imported, which takes seconds.
The model configs' fields and their one-line descriptions are read from the configuration modules' source
(`ast`), not by importing them; a test checks that this agrees with the classes themselves.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import re
import sys
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: --model NAME -> (configuration module in hf_vae/, config class). The one list of model names on the command
#: line (hf_vae.MODELS and hf_vae.PRIORS map the same names to the classes; a test keeps them in step). Adding a variant is
#: one line here.
MODEL_REGISTRY: Dict[str, Tuple[str, str]] = {
    "vae": ("configuration_vae", "VAEConfig"),
    "beta_vae": ("configuration_beta_vae", "BetaVAEConfig"),
    "vq_vae": ("configuration_vqvae", "VQVAEConfig"),
    "cvae": ("configuration_cvae", "CVAEConfig"),
    "klae": ("configuration_klae", "KLAEConfig"),
    "iwae": ("configuration_iwae", "IWAEConfig"),
    "miwae": ("configuration_miwae", "MIWAEConfig"),
    "vamp_vae": ("configuration_vamp_vae", "VampVAEConfig"),
    "info_vae": ("configuration_info_vae", "InfoVAEConfig"),
    "wae": ("configuration_wae", "WAEConfig"),
    "rae": ("configuration_rae", "RAEConfig"),
    "beta_tcvae": ("configuration_beta_tcvae", "BetaTCVAEConfig"),
    "factor_vae": ("configuration_factor_vae", "FactorVAEConfig"),
    # priors, fit afterwards to a trained autoencoder's latents (hf_vae.PRIORS)
    "vq_prior": ("configuration_vq_prior", "VQPriorConfig"),
}
MODEL_NAMES = tuple(MODEL_REGISTRY)
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("cosine", "constant")
REPORT_TO = ("auto", "tensorboard", "jsonl", "all", "none")
DISC_LOSSES = ("hinge", "vanilla")
PIXEL_LOSSES = ("l1", "l2")
TRAIN_MODULES = ("all", "decoder")  # hf_vae.training.pretrained.TRAIN_MODULES (kept here: --help imports nothing)

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
        f"default vae, or with --pretrained_model_name_or_path the source's.",
        group=MODEL, choices=MODEL_NAMES, metavar="NAME"))
    vqvae: Optional[str] = field(default=None, metadata=_help(
        "With --model vq_prior: the trained VQ-VAE (a folder or Hub repo) whose code maps the GPT-2 prior learns; "
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
        "Adam beta1 (default 0.9; 0.5 when a discriminator is trained, as in latent diffusion).", group=OPTIM))
    adam_beta2: Optional[float] = field(default=None, metadata=_help(
        "Adam beta2 (default 0.999; 0.9 when a discriminator is trained).", group=OPTIM))
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
    latent_density_examples: int = field(default=10000, metadata=_help(
        "Training examples whose codes the ex-post mixture is fitted to.", group=EVAL))
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
    # -- the perceptual + adversarial objective (klae always; vq_vae when asked: VQGAN) -----------------------
    pixel_loss: Optional[str] = field(default=None, metadata=_help(
        "Pixel term of the KLAE/VQGAN objective (default: the KLAE config's, else l1).", group=OBJ,
        choices=PIXEL_LOSSES))
    perceptual_weight: Optional[float] = field(default=None, metadata=_help(
        "Weight of the LPIPS term (default 1.0 for klae; for vq_vae a value > 0 switches on the VQGAN objective). "
        "Needs --lpips_weights; 0 trains without it.", group=OBJ))
    lpips_weights: Optional[str] = field(default=None, metadata=_help(
        "Folder of LPIPS weights in safetensors (see scripts/convert_lpips_weights.py).", group=OBJ, metavar="DIR"))
    disc_start: Optional[int] = field(default=None, metadata=_help(
        "Step at which the PatchGAN discriminator switches on (default 50001 for klae as in latent diffusion's "
        "KL-f8; for vq_vae, setting it switches on the VQGAN objective).", group=OBJ))
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
        "diffusers AutoencoderKL folder or Hub repo (-> klae), or a latent-diffusion .safetensors file (-> klae). "
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
        "KLAE: train through model.enable_fast_path() (on a GPU: channels-last, fused GroupNorm+SiLU, "
        "torch.compile of the encoder and decoder; on a CPU it keeps the default path).", group=MODEL))

    def __post_init__(self):
        for f in fields(self):  # inf / NaN would train silently wrong (or not at all)
            value = getattr(self, f.name)
            if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"Expected `{f.name}` to be a finite number, got {value!r}.")
        if self.model is None and self.pretrained_model_name_or_path is None:
            self.model = "vae"
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
        if self.compile and self.model not in (None, "klae"):
            raise ValueError(f"--compile applies to --model klae (KLAEModel.enable_fast_path), got --model "
                             f"{self.model}.")
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
        if self.model == "vq_prior" and not self.vqvae:
            raise ValueError("--model vq_prior fits a prior to a trained VQ-VAE: expected --vqvae DIR_OR_REPO, got none.")
        if self.vqvae and self.model != "vq_prior":
            raise ValueError(f"--vqvae applies to --model vq_prior, got --model {self.model}.")


@dataclass
class DataArguments:
    """What to train on. Streams come from `hf_vae.data.build_dataset`."""

    dataset: str = field(default="shapes", metadata=_help(
        "'shapes' (procedural dSprites), 'fashion_mnist', 'photos' (scikit-image crops), a datasets id or a local "
        "path (image folder, data files or save_to_disk folder).", group=DATA))
    eval_split: str = field(default="test", metadata=_help("Split used by the evaluations.", group=DATA))
    image_column: Optional[str] = field(default=None, metadata=_help("Image column of a generic dataset.", group=DATA))
    label_column: Optional[str] = field(default=None, metadata=_help("Label column of a generic dataset (cvae).", group=DATA))
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


# ------------------------------------------------------------------------------------------------------------
# Recipes: what a run uses for the settings the user does not give
# ------------------------------------------------------------------------------------------------------------

#: --model NAME -> {"*": settings for every dataset, DATASET: settings for that dataset}. A setting is a trainer
#: flag whose default is None (max_steps, learning_rate, batch_size, perceptual_weight, ...) or a model config
#: field. Each was measured on 2 CPU cores (benchmarks/bench_default_recipes.py, README "Default recipes"); the
#: config classes keep their diffusers/transformers-compatible defaults, the recipes only fill what a command
#: line leaves open. A model without an entry trains with RECIPE_FALLBACKS and its config's defaults.
RECIPES: Dict[str, Dict[str, Dict[str, Any]]] = {
    # Burgess et al. (2018)'s network (4 stride-2 convs to 4x4, dense 256-256, 10 latents) on 64x64 shapes, with
    # a local latent of one channel on the 8x8 grid under the 10 global ones. With the global latent alone,
    # squares and hearts come out as round blobs after this budget; it has to learn a square's orientation before
    # the decoder can draw corners, and 5x the budget is not enough. The local latent keeps them (README, "Default
    # recipes"). Many small steps beat fewer large ones on 2 cores: batch 32 at 2e-3 under the cosine, 6000
    # steps. The NLL with K = 10 importance samples keeps the evaluations to seconds.
    "vae": {
        "*": {"max_steps": 6000, "learning_rate": 2e-3, "batch_size": 32, "eval_steps": 2000,
              "eval_importance_samples": 10},
        "shapes": {"backbone": "burgess", "block_out_channels": [32, 32, 32, 32], "hidden_dims": [256, 256],
                   "latent_dim": 10, "local_latent_channels": 1},
    },
    "beta_vae": {
        "*": {"max_steps": 6000, "learning_rate": 2e-3, "batch_size": 32, "eval_steps": 2000,
              "eval_importance_samples": 10},
        "shapes": {"backbone": "burgess", "block_out_channels": [32, 32, 32, 32], "hidden_dims": [256, 256],
                   "latent_dim": 10, "beta": 4.0},
    },
    # EMA codebook (decay 0.99), k-means initialisation on the first batch and restarts of codes whose average
    # count per batch falls under 1, so that every code stays in use; 32x32 shapes as a 16x16 grid of codes.
    "vq_vae": {
        "*": {"max_steps": 1000, "learning_rate": 1e-3, "batch_size": 32, "eval_steps": 500,
              "num_embeddings": 128, "embedding_dim": 16, "use_ema": True, "kmeans_init": True,
              "dead_code_threshold": 1.0},
        "shapes": {"image_size": 32, "backbone": "conv", "block_out_channels": [16, 32], "layers_per_block": 1,
                   "mid_block_add_attention": False, "norm_num_groups": 8},
        "fashion_mnist": {"backbone": "conv", "block_out_channels": [16, 32], "layers_per_block": 1,
                          "mid_block_add_attention": False, "norm_num_groups": 8},
    },
    # One row of samples per class (the trainer's grid); the Burgess network with the class embedding broadcast
    # as input channels of the encoder and concatenated to the decoder's latent.
    "cvae": {
        "*": {"max_steps": 6000, "learning_rate": 2e-3, "batch_size": 32, "eval_steps": 2000,
              "eval_importance_samples": 10},
        "shapes": {"backbone": "burgess", "block_out_channels": [32, 32, 32, 32], "hidden_dims": [256, 256],
                   "latent_dim": 10},
        "fashion_mnist": {"backbone": "burgess", "block_out_channels": [32, 64], "hidden_dims": [256],
                          "latent_dim": 16},
    },
    # f = 4 (two down-samplings), attention over the 16x16 latent grid of a 64x64 image: well under a second per
    # step on 2 cores. The perceptual term is on when LPIPS weights are at hand (see --lpips_weights).
    "klae": {
        "*": {"max_steps": 600, "learning_rate": 4.5e-4, "batch_size": 16, "eval_steps": 300,
              "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8,
              "latent_channels": 4},
    },
}
#: used where a model's recipe does not set them
RECIPE_FALLBACKS: Dict[str, Any] = {"max_steps": 1000, "learning_rate": 1e-3, "batch_size": 64, "eval_steps": 500,
                                    "eval_importance_samples": 100}
#: model config fields that make up an architecture: when the user gives any of them, the recipe's are all
#: dropped, so that a recipe never grafts its channel list onto the user's network
ARCHITECTURE_FIELDS = ("backbone", "block_out_channels", "hidden_dims", "layers_per_block", "norm_num_groups",
                       "mid_block_add_attention", "latent_channels", "latent_dim", "local_latent_channels")
_DATASET_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
                    "zalando-datasets/fashion_mnist": "fashion_mnist"}


def recipe(model: str, dataset: str) -> Dict[str, Any]:
    """The settings `--model model --dataset dataset` uses where the command line gives none."""
    entry = RECIPES.get(model, {})
    key = _DATASET_ALIASES.get(str(dataset).lower(), str(dataset).lower())
    return {**entry.get("*", {}), **entry.get(key, {})}


def apply_recipe(train_args: "TrainArguments", data_args: "DataArguments", model_config: Dict[str, Any],
                 pretrained: bool = False) -> Tuple["TrainArguments", Dict[str, Any], Dict[str, Any]]:
    """Fill what the user left unset from the model's recipe.

    Returns (train_args with every recipe flag resolved, model_config with the recipe's fields added, the
    settings the recipe supplied). A fine-tuning run (`pretrained`) takes its architecture from the checkpoint,
    so only the trainer settings apply.
    """
    import dataclasses

    settings = recipe(train_args.model, data_args.dataset)
    trainer_names = {f.name for f in fields(TrainArguments)}
    applied: Dict[str, Any] = {}
    updates: Dict[str, Any] = {}
    for name in sorted((set(settings) & trainer_names) | set(RECIPE_FALLBACKS)):
        if getattr(train_args, name) is None:
            updates[name] = settings.get(name, RECIPE_FALLBACKS.get(name))
            if name in settings:
                applied[name] = settings[name]
    config = dict(model_config)
    if not pretrained:
        fields_given = {k: v for k, v in settings.items() if k not in trainer_names}
        if any(name in config for name in ARCHITECTURE_FIELDS):  # the user designs the network: all of it
            fields_given = {k: v for k, v in fields_given.items() if k not in ARCHITECTURE_FIELDS}
        for name, value in fields_given.items():
            if name not in config:
                config[name] = value
                applied[name] = value
    return dataclasses.replace(train_args, **updates), config, applied


def _recipe_help(model: str) -> str:
    lines = [f"{model} recipe (what a run uses for every setting not given):"]
    entry = RECIPES.get(model, {})
    for dataset, settings in entry.items():
        where = "every dataset" if dataset == "*" else f"--dataset {dataset}"
        shown = ", ".join(f"{k} {_show(v)}" for k, v in settings.items())
        lines.append(f"  {where}: {shown}")
    if "*" not in entry:
        lines.append(f"  every dataset: " + ", ".join(f"{k} {_show(v)}" for k, v in RECIPE_FALLBACKS.items()))
    import textwrap

    return "\n".join(textwrap.fill(line, width=100, subsequent_indent="      ") for line in lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Model config fields, read from the configuration modules' source
# ------------------------------------------------------------------------------------------------------------

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRANSFORMERS_BASES = ("PretrainedConfig", "PreTrainedConfig")


@dataclass(frozen=True)
class ConfigField:
    """One keyword argument of a model config: its default and the first sentence of its docstring entry."""

    name: str
    default: Any
    description: str = ""


@functools.lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module:
    path = os.path.join(_PACKAGE_DIR, module + ".py")
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _constant(node: ast.AST, tree: ast.Module) -> Any:
    """A default value: a literal, or a module-level constant of the same file."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.Name):
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id
                                                          for t in statement.targets):
                return _constant(statement.value, tree)
    return ast.unparse(node)


def _docstring_args(doc: Optional[str]) -> Dict[str, str]:
    """{'name': 'first sentence'} from the `Args:` section of a transformers-style docstring.

    An entry is `name (`type`, defaults to x): description`, possibly several names sharing one entry
    (`in_channels (...), out_channels (...): image channels.`) and continuation lines indented deeper.
    """
    if not doc:
        return {}
    lines = doc.expandtabs().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:") + 1
    except StopIteration:
        return {}
    entries: List[str] = []
    indent = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        if depth == indent:
            entries.append(line.strip())
        elif entries:
            entries[-1] += " " + line.strip()
    out: Dict[str, str] = {}
    for entry in entries:
        # Split at the first colon outside parentheses and backquotes: names and types, then the description.
        level, quoted, split = 0, False, None
        for i, char in enumerate(entry):
            if char == "`":
                quoted = not quoted
            elif not quoted and char in "([":
                level += 1
            elif not quoted and char in ")]":
                level -= 1
            elif char == ":" and level == 0 and not quoted:
                split = i
                break
        header = entry if split is None else entry[:split]
        if split is None:  # `name (`type`, defaults to x).`: the parenthesis is the description
            inside = header[header.find("(") + 1: header.rfind(")")] if "(" in header else ""
            description = re.sub(r"^`[^`]*`,?\s*", "", inside.strip())
        else:
            description = entry[split + 1:].strip()
        description = re.split(r"\.\s+(?=[A-Z])", description)[0].rstrip(".")  # the first sentence
        level, names, word = 0, [], ""
        for char in header + " ":
            if char in "([":
                level += 1
            elif char in ")]":
                level -= 1
            elif level == 0 and (char.isalnum() or char == "_"):
                word += char
                continue
            if word:
                names.append(word)
            word = ""
        for name in names:
            out.setdefault(name, description)
    return out


def _class_fields(module: str, class_name: str) -> Dict[str, ConfigField]:
    """The keyword arguments of `class_name.__init__` and of its bases up to transformers' config, in MRO order
    (a subclass's default wins), with their docstring descriptions."""
    tree = _module_tree(module)
    klass = next((node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name), None)
    if klass is None:
        raise ValueError(f"Expected a class {class_name} in hf_vae/{module}.py, found none.")
    docs = _docstring_args(ast.get_docstring(klass))
    own: Dict[str, ConfigField] = {}
    init = next((node for node in klass.body if isinstance(node, ast.FunctionDef) and node.name == "__init__"), None)
    if init is not None:
        positional = init.args.posonlyargs + init.args.args
        defaults = [None] * (len(positional) - len(init.args.defaults)) + list(init.args.defaults)
        pairs = list(zip(positional, defaults)) + list(zip(init.args.kwonlyargs, init.args.kw_defaults))
        for arg, default in pairs:
            if arg.arg != "self":
                value = MISSING if default is None else _constant(default, tree)
                own[arg.arg] = ConfigField(arg.arg, value, docs.get(arg.arg, ""))
    inherited: Dict[str, ConfigField] = {}
    for base in klass.bases:
        base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        if base_name in _TRANSFORMERS_BASES:
            continue
        for name, entry in _class_fields(_defining_module(tree, module, base_name), base_name).items():
            inherited.setdefault(name, entry)
    merged = dict(own)
    for name, entry in inherited.items():
        if name in merged:  # redefined default, inherited description when the subclass gives none
            merged[name] = ConfigField(name, merged[name].default, merged[name].description or entry.description)
        else:
            merged[name] = entry
    return merged


def _defining_module(tree: ast.Module, module: str, name: str) -> str:
    """The sibling module that defines `name` as seen from `module` (`from .configuration_base import X`)."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and any(a.name == name for a in node.names):
            return node.module
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module
    raise ValueError(f"Cannot find where {name}, a base class in hf_vae/{module}.py, is defined.")


@functools.lru_cache(maxsize=None)
def model_config_field_info(model: str) -> Tuple[ConfigField, ...]:
    """The fields `--model model` accepts as --name value, with defaults and one-line descriptions."""
    _choice("model", model, MODEL_NAMES)
    module, class_name = MODEL_REGISTRY[model]
    entries = dict(_class_fields(module, class_name))
    if "sample_size" in entries and "image_size" not in entries:  # the KLAE: every variant takes --image_size
        entries["image_size"] = ConfigField("image_size", None, "alias of sample_size")
    return tuple(entries.values())


def model_config_defaults(model: str) -> Dict[str, Any]:
    """The keyword arguments the config class of `model` accepts (its own and its parents', up to transformers'),
    with their default values."""
    return {entry.name: entry.default for entry in model_config_field_info(model)}


def model_config_fields(model: str) -> List[str]:
    """The names of the fields `--model model` accepts as --name value."""
    return list(model_config_defaults(model))


def _train_data_field_names() -> set:
    return {f.name for f in fields(TrainArguments)} | {f.name for f in fields(DataArguments)}


def check_model_config(model: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Refuse keys that are neither trainer flags nor fields of the model's config, naming what is accepted."""
    defaults = model_config_defaults(model)
    unknown = [k for k in overrides if k not in defaults]
    if unknown:
        raise ValueError(
            f"Unknown argument(s) {', '.join('--' + k for k in unknown)} for --model {model}"
            f"{_did_you_mean(unknown, list(defaults) + sorted(_train_data_field_names()))}: expected a trainer "
            f"flag (see --help) or a field of {_config_class_name(model)}: {', '.join(defaults)}.")
    checked = {}
    for key, value in overrides.items():
        # A list-valued field given one value on the command line (--hidden_dims 256) is a one-element list.
        if isinstance(defaults[key], (list, tuple)) and not isinstance(value, (list, tuple)) and value is not None:
            value = [value]
        checked[key] = value
    return checked


def _did_you_mean(unknown: Sequence[str], known: Sequence[str]) -> str:
    """' (did you mean --latent_dim?)' for the known names closest to the misspelt ones; '' when none is close."""
    import difflib

    guesses = [match[0] for name in unknown for match in [difflib.get_close_matches(name, known, n=1, cutoff=0.75)]
               if match]
    return f" (did you mean {', '.join('--' + g for g in guesses)}?)" if guesses else ""


def _config_class_name(model: str) -> str:
    return MODEL_REGISTRY[model][1]


def _parse_value(tokens: List[str]) -> Any:
    """'10' -> 10, '1e-3' -> 0.001, 'true' -> True, 'null' -> None, '[32, 64]' / '32,64' / '32 64' -> [32, 64]."""
    import yaml

    def one(token: str):
        try:
            value = yaml.safe_load(token)
        except yaml.YAMLError:
            return token
        if isinstance(value, str) and _is_number(value):  # YAML 1.1 reads 1e-4 (no dot) as a string
            return float(value)
        return value

    if len(tokens) == 1:
        token = tokens[0]
        if "," in token and not token.strip().startswith(("[", "{", "(")):
            return [one(t) for t in token.split(",") if t.strip()]
        if token.strip().startswith("("):
            return list(one("[" + token.strip()[1:-1] + "]"))
        return one(token)
    return [one(t) for t in tokens]


def _parse_model_flags(remaining: List[str]) -> Dict[str, Any]:
    """['--latent_dim', '10', '--block_out_channels', '32', '64', '--x=1'] -> {'latent_dim': 10, ...}."""
    out: Dict[str, Any] = {}
    i = 0
    while i < len(remaining):
        token = remaining[i]
        if not token.startswith("--"):
            raise ValueError(f"Unexpected argument {token!r}: expected --name value pairs.")
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if eq:
            out[name] = _parse_value([value])
            i += 1
            continue
        j = i + 1
        while j < len(remaining) and not (remaining[j].startswith("--") and len(remaining[j]) > 2
                                          and not _is_number(remaining[j])):
            j += 1
        if j == i + 1:  # a bare flag: a boolean switch
            out[name] = True
        else:
            out[name] = _parse_value(remaining[i + 1: j])
        i = j
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def _yaml_numbers(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as a string: such strings become floats, as on the command line."""
    if isinstance(value, dict):
        return {k: _yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_numbers(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a JSON or YAML file of arguments into a dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--config {path}: cannot be read ({error}).") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"--config {path}: not valid JSON ({error}).") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ValueError(f"--config {path}: not valid YAML{line} ({getattr(error, 'problem', None) or error})."
                             ) from None
        data = _yaml_numbers(data)
    if not isinstance(data, dict):
        raise ValueError(f"Expected --config {path} to hold a mapping of argument names to values, "
                         f"got {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# ------------------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter with lines wrapped at 100 columns at most and the help column at 34."""

    def __init__(self, prog: str):
        import shutil

        width = min(100, shutil.get_terminal_size((100, 24)).columns - 2)
        super().__init__(prog, max_help_position=34, width=max(60, width))


def _field_type(f) -> Tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool', optional) from a dataclass field's annotation (a string here)."""
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = annotation.startswith("Optional[")
    return (annotation[len("Optional["):-1] if optional else annotation), optional


def _converter(base: str, optional: bool):
    kind = {"int": int, "float": float, "str": str}[base]

    def convert(token: str):
        if optional and token.lower() in ("none", "null"):
            return None
        if kind is int:  # 1e3 is the integer 1000, as in a YAML/JSON config; 1.5 is not an integer
            try:
                return int(token)
            except ValueError:
                number = float(token)
                if not number.is_integer():
                    raise
                return int(number)
        return kind(token)

    convert.__name__ = base  # argparse names it in "invalid int value: 'x'"
    return convert


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value) or "[]"
    return "None" if value is None else str(value)


_METAVARS = {"int": "N", "float": "X", "str": "NAME"}


def _field_metavar(default: Any) -> str:
    if isinstance(default, bool):
        return "{true,false}"
    if isinstance(default, (list, tuple)):
        return f"{_field_metavar(default[0]) if default else 'V'} [...]"
    return {int: "N", float: "X", str: "NAME"}.get(type(default), "VALUE")


def _add_field(group, f) -> None:
    """One dataclass field as a flag: a switch for a bool, a typed value otherwise, with its default shown."""
    meta = dict(f.metadata)
    text = meta.pop("help", "").replace("%", "%%")  # argparse %-formats help strings
    meta.pop("group", None)
    base, optional = _field_type(f)
    flag = "--" + f.name
    if base == "bool":
        if f.default is None:  # three states: --x, --no_x, or neither (the run decides)
            group.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=text)
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_const", const=False,
                               help=f"Turn --{f.name} off.")
        else:  # the switch that changes the default is shown; the other one exists for `--x false` and files
            on, off = (argparse.SUPPRESS, text) if f.default else (text, argparse.SUPPRESS)
            group.add_argument(flag, dest=f.name, action="store_true", default=f.default, help=on)
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=off)
        return
    if f.default is not None and f.default is not MISSING:
        text = f"{text} (default: {_show(f.default)})"
    metavar = meta.pop("metavar", None) or (None if "choices" in meta else _METAVARS[base])
    group.add_argument(flag, dest=f.name, type=_converter(base, optional), default=f.default, metavar=metavar,
                       help=text, **meta)


def _underscored_flags(argv: List[str]) -> List[str]:
    """`--max-steps 10` -> `--max_steps 10`: every flag is accepted with dashes or underscores."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2 and not _is_number(token):
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """--debug on the command line, or HF_VAE_DEBUG=1 (HF_VAE_TRACEBACK=1, its older name): show tracebacks."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or any(os.environ.get(name, "") not in ("", "0") for name in
                                     ("HF_VAE_DEBUG", "HF_VAE_TRACEBACK"))


def _switch_values(argv: List[str]) -> List[str]:
    """`--skip_nonfinite true`, `--binarize=false`, `--no_x yes` (the older spelling of the switches) ->
    `--skip_nonfinite`, `--no_binarize`, `--no_x`."""
    switches = {}
    for f in fields(TrainArguments) + fields(DataArguments):
        if _field_type(f)[0] == "bool":
            switches[f.name] = f.default
    out: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name not in switches or (not eq and (i + 1 >= len(argv) or argv[i + 1].lower() not in _TRUE + _FALSE)):
            out.append(token)
            i += 1
            continue
        if not eq:
            value = argv[i + 1]
            i += 1
        i += 1
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f"Expected --{name} alone, or followed by true or false, got {value!r}.")
        out.append(f"--{name}" if value.lower() in _TRUE else f"--no_{name}")
    return out


def _model_fields_help(model: str) -> str:
    """The `model fields` section of --help: every field of the model's config, default and one-line description."""
    module, class_name = MODEL_REGISTRY[model]
    helper = argparse.ArgumentParser(add_help=False, usage=argparse.SUPPRESS, formatter_class=_Formatter)
    group = helper.add_argument_group(
        f"{model} model fields ({class_name})",
        "Any of them as --name VALUE (lists as 32 64 or 32,64); '--model NAME --help' shows another model's.")
    for entry in model_config_field_info(model):
        default = "" if entry.default is MISSING else f" (default: {_show(entry.default)})"
        text = (entry.description + default).replace("%", "%%")
        group.add_argument("--" + entry.name, metavar=_field_metavar(entry.default), help=text)
    return helper.format_help()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose --help ends with the chosen model's config fields."""

    help_model = "vae"

    def error(self, message: str):
        """One line, as every other error of train.py (argparse's default adds the whole usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def format_help(self) -> str:
        return (super().format_help().rstrip("\n") + "\n\n" + _model_fields_help(self.help_model) + "\n"
                + _recipe_help(self.help_model))


def build_parser(model: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of `scripts/train.py`: trainer and data flags in their groups, with choices and defaults;
    --help then lists the config fields of `model` (default: vae)."""
    parser = _Parser(
        prog="train.py", formatter_class=_Formatter, allow_abbrev=False,
        usage="%(prog)s [-h] [--model NAME] [--dataset NAME] [--config FILE]\n"
              "                [--FLAG VALUE ...] [--MODEL_FIELD VALUE ...]",
        description="Train an hf_vae model with one Accelerate loop. With no arguments: a VAE on the procedural "
                    "shapes stream, a few minutes on 2 CPU cores. Every model config field is accepted as "
                    "--name VALUE (listed at the end).")
    parser.help_model = model if model in MODEL_REGISTRY else "vae"
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    other = None
    for f in fields(TrainArguments) + fields(DataArguments):
        group = groups.get(f.metadata.get("group"))
        if group is None:
            other = other or parser.add_argument_group("other options")
            group = other
        _add_field(group, f)
    return parser


def _peek(argv: Sequence[str], name: str) -> Optional[str]:
    """The value of --name in argv (last one wins), before parsing."""
    value = None
    for i, token in enumerate(argv):
        if token == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
    return value


def _file_value(name: str, value: Any) -> Any:
    """A trainer flag's value from a --config file, typed as on the command line (`max_steps: 1e3` is 1000)."""
    kinds = {f.name: _field_type(f)[0] for f in fields(TrainArguments) + fields(DataArguments)}
    if kinds.get(name) == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kinds.get(name) == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[TrainArguments, DataArguments, Dict[str, Any]]:
    """Parse the command line (and --config FILE) into (TrainArguments, DataArguments, model config overrides).

    Precedence: command line > --config file > defaults (dataset-derived model fields are filled in later by
    the trainer, only where neither gave a value).
    """
    argv = _switch_values(_underscored_flags(list(sys.argv[1:] if argv is None else argv)))
    # The config file is read first so that its values become defaults the command line can override.
    config_path = _peek(argv, "config")
    file_values = load_config_file(config_path) if config_path else {}
    known = _train_data_field_names()
    parser = build_parser(_peek(argv, "model") or file_values.get("model"))
    parser.set_defaults(**{k: _file_value(k, v) for k, v in file_values.items() if k in known})
    namespace, remaining = parser.parse_known_args(argv)
    values = vars(namespace)
    train_args = TrainArguments(**{f.name: values[f.name] for f in fields(TrainArguments)})
    data_args = DataArguments(**{f.name: values[f.name] for f in fields(DataArguments)})
    model_config = {k: v for k, v in file_values.items() if k not in known}
    model_config.update(_parse_model_flags(remaining))
    if train_args.pretrained_model_name_or_path is not None:  # the model comes from the source: checked in train()
        return train_args, data_args, model_config
    return train_args, data_args, check_model_config(train_args.model, model_config)


def parse_command_line(argv: Optional[Sequence[str]] = None) -> Tuple[TrainArguments, DataArguments, Dict[str, Any]]:
    """`parse_args` for a command: a bad argument prints one line `train.py: error: ...` and exits with status 2,
    as argparse's own errors do (--debug or HF_VAE_DEBUG=1 shows the traceback); --help prints and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        return parse_args([token for token in argv if token != "--debug"])
    except (ValueError, FileNotFoundError) as error:
        if debug:
            raise
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
