"""The trainer's arguments: two dataclasses, a model-config dict, and the command line that fills them.

    python scripts/train.py --model vae --dataset shapes --max_steps 2000 --latent_dim 10 --config run.yaml

`TrainArguments` and `DataArguments` are parsed by transformers' `HfArgumentParser`; every other `--name value`
pair must be a field of the chosen model's config (`--latent_dim 10`, `--block_out_channels 32 64`,
`--beta 4`) and goes to the config constructor. `--config FILE.json|yaml` holds the same keys; flags given on
the command line win over the file.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

MODEL_NAMES = ("vae", "beta_vae", "vq_vae", "cvae", "klae")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("cosine", "constant")
REPORT_TO = ("auto", "tensorboard", "jsonl", "all", "none")
DISC_LOSSES = ("hinge", "vanilla")
PIXEL_LOSSES = ("l1", "l2")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainArguments:
    """How to train: model variant, optimisation, schedule, checkpoints, evaluation, logging, publishing."""

    model: str = field(default="vae", metadata=_help(f"Model variant, one of {MODEL_NAMES}."))
    output_dir: Optional[str] = field(default=None, metadata=_help(
        "Where the run is written (default outputs/<model>-<dataset>): config.json and model.safetensors at the "
        "root, metrics.json, training_args.json, reconstructions.png, samples.png, checkpoints/, logs/."))
    config: Optional[str] = field(default=None, metadata=_help(
        "A JSON or YAML file of arguments (the same keys as the flags, model config fields included); flags "
        "given on the command line override it."))
    max_steps: int = field(default=1000, metadata=_help("Number of optimisation steps."))
    num_epochs: Optional[float] = field(default=None, metadata=_help(
        "Train for this many passes over the training split instead of --max_steps (needs a dataset of known "
        "size): max_steps = epochs * examples // (batch_size * processes * accumulation)."))
    batch_size: int = field(default=64, metadata=_help("Examples per process per micro-batch."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "Micro-batches per optimisation step (effective batch = batch_size * processes * this)."))
    learning_rate: float = field(default=1e-3, metadata=_help("Peak learning rate (Adam)."))
    lr_scheduler: str = field(default="cosine", metadata=_help(
        f"Learning-rate schedule after the linear warm-up, one of {LR_SCHEDULERS}."))
    warmup_steps: Optional[int] = field(default=None, metadata=_help(
        "Linear warm-up steps (default: 5 %% of max_steps)."))
    min_lr_ratio: float = field(default=0.0, metadata=_help("Final learning rate of the cosine, as a fraction of the peak."))
    adam_beta1: Optional[float] = field(default=None, metadata=_help(
        "Adam beta1 (default 0.9; 0.5 when a discriminator is trained, as in latent diffusion)."))
    adam_beta2: Optional[float] = field(default=None, metadata=_help(
        "Adam beta2 (default 0.999; 0.9 when a discriminator is trained)."))
    weight_decay: float = field(default=0.0, metadata=_help("Decoupled weight decay (AdamW); 0 is plain Adam."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Clip the gradient norm to this (0 disables clipping)."))
    ema_decay: float = field(default=0.0, metadata=_help(
        "Keep an exponential moving average of the weights with this decay (e.g. 0.999; 0 = off). When on, the "
        "averaged weights are evaluated and published."))
    seed: int = field(default=0, metadata=_help("Seed of the model initialisation, the data order and the noise."))
    mixed_precision: str = field(default="no", metadata=_help(
        f"One of {MIXED_PRECISION}. fp16 needs an accelerator (CUDA/XPU/MPS) and falls back to 'no' without one; "
        "bf16 also runs on CPUs."))
    checkpointing_steps: int = field(default=500, metadata=_help(
        "Save the full training state to output_dir/checkpoints/checkpoint-<step> every N steps (0 = only at the end)."))
    checkpoints_total_limit: Optional[int] = field(default=3, metadata=_help(
        "Keep only the newest N checkpoints (None keeps all)."))
    resume_from_checkpoint: Optional[str] = field(default=None, metadata=_help(
        "'latest' (the newest complete checkpoint in output_dir/checkpoints; a fresh start if there is none) or "
        "the path of a checkpoint folder."))
    eval_steps: int = field(default=500, metadata=_help("Evaluate every N steps (0 = only at the end)."))
    eval_max_examples: Optional[int] = field(default=1000, metadata=_help(
        "Examples used by the periodic evaluations (the first ones of the split)."))
    final_eval_max_examples: Optional[int] = field(default=None, metadata=_help(
        "Examples used by the final evaluation that writes metrics.json (default: the whole split)."))
    eval_batch_size: int = field(default=128, metadata=_help("Batch size of the evaluations."))
    eval_importance_samples: int = field(default=100, metadata=_help(
        "Importance samples K of the NLL during training (scripts/evaluate.py defaults to 1000; 0 skips it)."))
    logging_steps: int = field(default=10, metadata=_help("Log averaged loss terms every N steps."))
    report_to: str = field(default="auto", metadata=_help(
        f"Trackers, one of {REPORT_TO}: auto = TensorBoard when installed, otherwise JSON lines in logs/metrics.jsonl."))
    skip_nonfinite: bool = field(default=False, metadata=_help(
        "Skip a batch whose loss or gradient is NaN/inf instead of stopping the run."))
    num_sample_images: int = field(default=64, metadata=_help("Images in samples.png (reconstructions.png: half)."))
    push_to_hub: bool = field(default=False, metadata=_help("Upload output_dir to the Hub at the end (needs --hub_model_id)."))
    hub_model_id: Optional[str] = field(default=None, metadata=_help("Hub repository id, e.g. user/vae-shapes."))
    hub_private: bool = field(default=False, metadata=_help("Create the Hub repository as private."))
    # -- the perceptual + adversarial objective (klae always; vq_vae when asked: VQGAN) -----------------------
    pixel_loss: Optional[str] = field(default=None, metadata=_help(
        f"Pixel term of the KLAE/VQGAN objective, one of {PIXEL_LOSSES} (default: the KLAE config's, else l1)."))
    perceptual_weight: Optional[float] = field(default=None, metadata=_help(
        "Weight of the LPIPS term (default 1.0 for klae; for vq_vae a value > 0 switches on the VQGAN objective). "
        "Needs --lpips_weights; 0 trains without it."))
    lpips_weights: Optional[str] = field(default=None, metadata=_help(
        "Folder of LPIPS weights in safetensors (see scripts/convert_lpips_weights.py)."))
    disc_start: Optional[int] = field(default=None, metadata=_help(
        "Step at which the PatchGAN discriminator switches on (default 50001 for klae as in latent diffusion's "
        "KL-f8; for vq_vae, setting it switches on the VQGAN objective)."))
    disc_weight: float = field(default=0.5, metadata=_help(
        "Multiplies the adaptive GAN weight (0 trains no discriminator)."))
    disc_loss: str = field(default="hinge", metadata=_help(f"Discriminator loss, one of {DISC_LOSSES}."))
    disc_num_layers: int = field(default=3, metadata=_help(
        "PatchGAN depth; images need at least 3 * 2**layers pixels per side."))
    disc_ndf: int = field(default=64, metadata=_help("Channels of the first discriminator layer."))
    disc_learning_rate: Optional[float] = field(default=None, metadata=_help(
        "Discriminator learning rate (default: --learning_rate)."))
    logvar_init: float = field(default=0.0, metadata=_help(
        "Output log-variance of the KLAE NLL (rec / exp(logvar) + logvar); its initial value with --learn_logvar."))
    learn_logvar: bool = field(default=False, metadata=_help(
        "Learn the KLAE NLL's log-variance. Off by default: latent diffusion keeps it at --logvar_init."))
    codebook_weight: float = field(default=1.0, metadata=_help("Weight of the VQ terms in the VQGAN objective."))

    def __post_init__(self):
        _choice("model", self.model, MODEL_NAMES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("report_to", self.report_to, REPORT_TO)
        _choice("disc_loss", self.disc_loss, DISC_LOSSES)
        if self.pixel_loss is not None:
            _choice("pixel_loss", self.pixel_loss, PIXEL_LOSSES)
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_batch_size", "logging_steps",
                     "disc_num_layers", "disc_ndf"):
            _positive_int(name, getattr(self, name))
        for name in ("checkpointing_steps", "eval_steps", "eval_importance_samples", "num_sample_images"):
            _non_negative_int(name, getattr(self, name))
        for name in ("warmup_steps", "checkpoints_total_limit", "eval_max_examples", "final_eval_max_examples",
                     "disc_start"):
            value = getattr(self, name)
            if value is not None:
                _non_negative_int(name, value)
        if self.checkpoints_total_limit == 0:
            raise ValueError("Expected `checkpoints_total_limit` >= 1 or None, got 0.")
        if self.num_epochs is not None and not self.num_epochs > 0:
            raise ValueError(f"Expected `num_epochs` > 0, got {self.num_epochs!r}.")
        if not self.learning_rate > 0:
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


@dataclass
class DataArguments:
    """What to train on. Streams come from `hf_vae.data.build_dataset`."""

    dataset: str = field(default="shapes", metadata=_help(
        "'shapes' (procedural dSprites), 'fashion_mnist', 'photos' (scikit-image crops), a datasets id or a local "
        "path (image folder, data files or save_to_disk folder)."))
    eval_split: str = field(default="test", metadata=_help("Split used by the evaluations."))
    image_column: Optional[str] = field(default=None, metadata=_help("Image column of a generic dataset."))
    label_column: Optional[str] = field(default=None, metadata=_help("Label column of a generic dataset (cvae)."))
    data_dir: Optional[str] = field(default=None, metadata=_help("data_dir for datasets.load_dataset / Fashion-MNIST IDX files."))
    binarize: Optional[bool] = field(default=None, metadata=_help(
        "Dynamic binarisation x ~ Bernoulli(intensity), fresh every epoch (default: on for Bernoulli decoders)."))
    data_seed: int = field(default=0, metadata=_help(
        "Content of procedural datasets (shapes factors and held-out split, photo crops); keep it fixed across runs."))
    num_train_examples: Optional[int] = field(default=None, metadata=_help(
        "Size of the training split of a procedural dataset (shapes, photos): a prefix of the default stream."))
    shuffle_buffer: int = field(default=1000, metadata=_help("Size of the streaming shuffle buffer."))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes per training process."))

    def __post_init__(self):
        _positive_int("shuffle_buffer", self.shuffle_buffer)
        _non_negative_int("num_workers", self.num_workers)
        if self.num_train_examples is not None:
            _positive_int("num_train_examples", self.num_train_examples)


def _choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"Expected `{name}` in {tuple(choices)}, got {value!r}.")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a positive int, got {value!r}.")


def _non_negative_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"Expected `{name}` to be an int >= 0, got {value!r}.")


# ------------------------------------------------------------------------------------------------------------
# Model config fields
# ------------------------------------------------------------------------------------------------------------


def model_config_defaults(model: str) -> Dict[str, Any]:
    """The keyword arguments the config class of `model` accepts (its own and its parents', up to transformers'),
    with their default values."""
    import hf_vae
    from transformers import PretrainedConfig

    _choice("model", model, MODEL_NAMES)
    config_class = hf_vae.MODELS[model][0]
    defaults: Dict[str, Any] = {}
    for klass in config_class.__mro__:
        if klass is PretrainedConfig or not issubclass(klass, PretrainedConfig):
            break
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" and p.name not in defaults:
                defaults[p.name] = p.default
    if model == "klae":
        defaults["image_size"] = None  # alias of sample_size, so every variant takes --image_size
    return defaults


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
            f"Unknown argument(s) {', '.join('--' + k for k in unknown)} for --model {model}: expected a trainer "
            f"flag (see --help) or a field of {_config_class_name(model)}: {', '.join(defaults)}.")
    checked = {}
    for key, value in overrides.items():
        # A list-valued field given one value on the command line (--hidden_dims 256) is a one-element list.
        if isinstance(defaults[key], (list, tuple)) and not isinstance(value, (list, tuple)) and value is not None:
            value = [value]
        checked[key] = value
    return checked


def _config_class_name(model: str) -> str:
    import hf_vae

    return hf_vae.MODELS[model][0].__name__


def _parse_value(tokens: List[str]) -> Any:
    """'10' -> 10, '1e-3' -> 0.001, 'true' -> True, 'null' -> None, '[32, 64]' / '32,64' / '32 64' -> [32, 64]."""
    import yaml

    def one(token: str):
        try:
            return yaml.safe_load(token)
        except yaml.YAMLError:
            return token

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


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a JSON or YAML file of arguments into a dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config file not found: {path}")
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"Expected --config {path} to hold a mapping of argument names to values, "
                         f"got {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_parser():
    """An `HfArgumentParser` over (TrainArguments, DataArguments), with the model config fields in the epilog."""
    import argparse

    from transformers import HfArgumentParser

    epilog = ["Any field of the model's config is also accepted as --name value, e.g. --latent_dim 10 "
              "--block_out_channels 32 64 --beta 4. Fields per model:"]
    for name in MODEL_NAMES:
        try:
            epilog.append(f"  {name}: {', '.join(model_config_fields(name))}")
        except Exception:  # pragma: no cover - only if hf_vae failed to import
            pass
    parser = HfArgumentParser((TrainArguments, DataArguments), prog="train.py",
                              description="Train an hf_vae model with one Accelerate loop.",
                              epilog="\n".join(epilog), formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[TrainArguments, DataArguments, Dict[str, Any]]:
    """Parse the command line (and --config FILE) into (TrainArguments, DataArguments, model config overrides).

    Precedence: command line > --config file > defaults (dataset-derived model fields are filled in later by
    the trainer, only where neither gave a value).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # The config file is read first so that its values become defaults the command line can override.
    config_path = None
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif token.startswith("--config="):
            config_path = token.split("=", 1)[1]
    file_values = load_config_file(config_path) if config_path else {}
    known = _train_data_field_names()
    parser.set_defaults(**{k: v for k, v in file_values.items() if k in known})
    train_args, data_args, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    model_config = {k: v for k, v in file_values.items() if k not in known}
    model_config.update(_parse_model_flags(remaining))
    return train_args, data_args, check_model_config(train_args.model, model_config)
