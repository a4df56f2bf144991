"""Describe a trained hf_vae model: read a training output directory, render its model card, compose its preview.

Model cards are rendered with Jinja2 from the templates in `model_cards/` at the root of the repository (or the
folder given as `template_dir`, or in the `HF_VAE_MODEL_CARDS` environment variable):

    model_cards/
        base.md.j2        the layout shared by every variant: YAML metadata, architecture table, usage snippets,
                          training data and hyper-parameters, evaluation table, preview image, references
        vae.md.j2         one per model type, `{% extends "base.md.j2" %}`, overriding only the blocks that differ:
        beta_vae.md.j2    `tagline`, `description`, `objective`, `architecture_rows`, `demo` (the lines of the
        vq_vae.md.j2      usage snippets that call the model), `usage_extra` (the KLAE's diffusers snippet),
        cvae.md.j2        `limitations` and `references`
        klae.md.j2

The YAML metadata is not written by hand in the templates: it is built here as a `huggingface_hub.ModelCardData`
(license, library_name, tags, datasets, pipeline_tag, model-index with the measured metrics) and inserted as
`{{ card_data }}`, so it is always valid YAML; the rendered card is parsed back with `huggingface_hub.ModelCard`
and checked before anything is pushed. Templates render with `StrictUndefined`: a misspelt variable is an error
that names the template and the line (`ModelCardTemplateError`), never a silently empty cell.

A training output directory (what the trainer leaves behind) holds:

    config.json, model.safetensors (+ the model code .py files that `save_pretrained` copies)
    metrics.json         {"model": name, "dataset": name, "split": "test", "step": int, "metrics": {name: float}}
    training_args.json   every argument of the run (model, dataset, max_steps, batch_size, learning_rate, seed, ...)
    reconstructions.png, samples.png
    checkpoints/         intermediate checkpoints (never pushed)
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import families
from ..data.names import canonical_dataset

__all__ = [
    "DEFAULT_LICENSE",
    "METRICS",
    "ModelCardTemplateError",
    "OutputDirError",
    "TrainingOutput",
    "build_card_context",
    "compose_preview",
    "default_template_dir",
    "image_grid",
    "load_model",
    "normalise_metrics",
    "read_output_dir",
    "render_model_card",
]

#: license written in the card's metadata unless another is given (that of hf_vae itself)
DEFAULT_LICENSE = "apache-2.0"
#: the files a complete training output directory must contain (plus the weights, see `WEIGHTS_FILES`)
REQUIRED_FILES = ("config.json", "metrics.json", "training_args.json")
#: either of these holds the weights: a single file, or the index of a sharded checkpoint
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
IMAGE_FILES = {"reconstructions": "reconstructions.png", "samples": "samples.png"}
TEMPLATE_SUFFIX = ".md.j2"
TEMPLATE_DIR_ENV = "HF_VAE_MODEL_CARDS"


class OutputDirError(ValueError):
    """A training output directory is missing, incomplete or inconsistent."""


class ModelCardTemplateError(ValueError):
    """A model card template is missing, does not parse, refers to an unknown variable, or breaks the metadata."""


# ------------------------------------------------------------------------------------------------------------
# What the cards say about variants, metrics and datasets
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    label: str
    unit: str
    #: None: not known (a metric hf_vae does not define); the card then says so instead of guessing
    higher_is_better: Optional[bool]
    description: str


#: what the card says about a metric hf_vae does not define (from a hand-written metrics.json)
UNKNOWN = "unknown"


METRICS: Dict[str, MetricSpec] = {
    "neg_elbo": MetricSpec("Negative ELBO", "nats / example", False,
                           "E_q[−log p(x|z)] + KL(q(z|x) ‖ p(z)), an upper bound on −log p(x) of the discrete data "
                           "(continuous densities: on dequantised data, plus D · log(256 / range))"),
    "nll": MetricSpec("NLL", "nats / example", False,
                      "importance-sampled estimate of −log p(x) of the discrete data (Burda et al. 2016)"),
    "bits_per_dim": MetricSpec("Bits per dimension", "bits / dim", False,
                               "NLL / (D · ln 2), D = data dimensions; bits of the 8-bit (or binary) data"),
    "xent_neg_elbo": MetricSpec("Negative ELBO, Bernoulli cross-entropy", "nats / example", False,
                                "the negative ELBO of a Bernoulli decoder on grey levels: a cross-entropy, not a "
                                "bound on a likelihood"),
    "xent_nll": MetricSpec("Importance-sampled cross-entropy", "nats / example", False,
                           "the NLL estimate of a Bernoulli decoder on grey levels: a cross-entropy, not a likelihood"),
    "xent_bits_per_dim": MetricSpec("Cross-entropy per dimension", "bits / dim", False,
                                    "xent_nll / (D · ln 2); not comparable with bits/dim of a likelihood"),
    "mse": MetricSpec("MSE", "per pixel, images in [0, 1]", False,
                      "mean squared error between images and their reconstructions, on images scaled to [0, 1]"),
    "psnr": MetricSpec("PSNR", "dB", True, "peak signal-to-noise ratio of the reconstructions, peak 1 on images in [0, 1]"),
    "ssim": MetricSpec("SSIM", "unitless, ≤ 1", True,
                       "structural similarity of the reconstructions on images in [0, 1] (Wang et al. 2004; 1 = identical)"),
    "mig": MetricSpec("MIG", "fraction of H(factor), 0 to 1", True,
                      "Mutual Information Gap between latents and ground-truth factors (Chen et al. 2018), in [0, 1]"),
    "codebook_usage": MetricSpec("Codebook usage", "fraction", True, "fraction of the codes used on the evaluation set"),
    "frechet_distance": MetricSpec("Fréchet distance", "squared feature units", False,
                                   "between features of generated samples and of the data (the dataset's own "
                                   "classifier, or Inception for FID)"),
    "perplexity": MetricSpec("Code perplexity", "codes", True,
                             "exp(entropy) of the code distribution; the codebook size when all codes are used evenly"),
    "prior_nll_per_code": MetricSpec("Prior NLL per code", "nats / code", False,
                                     "−log p(z_q) / n of the test code maps under the learned prior (prior/)"),
    "uniform_nll_per_code": MetricSpec("Uniform prior NLL per code", "nats / code", False,
                                       "log K: the same for the uniform prior over the K codes, for comparison"),
}


@dataclass(frozen=True)
class DatasetSpec:
    display: str
    hub_id: Optional[str]
    description: str


DATASETS: Dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        "Fashion-MNIST", "zalando-datasets/fashion_mnist",
        "28×28 greyscale images of clothing in 10 classes (Xiao et al. 2017): 60,000 training and 10,000 test "
        "images, MIT license."),
    "shapes": DatasetSpec(
        "Shapes (dSprites-style)", None,
        "procedurally generated white 2D shapes (square, ellipse, heart) on black, drawn from five known factors of "
        "variation (shape, scale, orientation, x and y position) by `hf_vae.data.shapes`; no files are needed."),
    "photos": DatasetSpec(
        "Photo crops", None,
        "random crops of the RGB photographs bundled with scikit-image (astronaut, chelsea, coffee, rocket, ...)."),
}

#: training arguments that are not hyper-parameters (paths, Hub settings) and never appear in a card
_NOT_HYPERPARAMETERS = {"output_dir", "logging_dir", "cache_dir", "data_dir", "resume_from_checkpoint",
                        "overwrite_output_dir", "push_to_hub", "hub_model_id", "hub_private", "hub_private_repo",
                        "hub_revision", "hub_strategy", "report_to", "config"}
_SECRET = re.compile(r"token|secret|password|api_key", re.IGNORECASE)
#: the training arguments summarised in the card's first training table, in this order (the trainer's
#: `resolved` values, e.g. the effective number of steps, take precedence over the requested ones)
_KEY_TRAINING_ARGS = (("max_steps", "Steps"), ("num_epochs", "Epochs"), ("batch_size", "Batch size (per process)"),
                      ("gradient_accumulation_steps", "Gradient accumulation steps"),
                      ("effective_batch_size", "Effective batch size"), ("num_processes", "Processes"),
                      ("learning_rate", "Learning rate"), ("lr_scheduler", "LR schedule"),
                      ("lr_scheduler_type", "LR schedule"), ("warmup_steps", "Warm-up steps"),
                      ("weight_decay", "Weight decay"), ("ema_decay", "EMA decay"), ("seed", "Seed"),
                      ("mixed_precision", "Mixed precision"))


# ------------------------------------------------------------------------------------------------------------
# Reading a training output directory
# ------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingOutput:
    """A validated training output directory, with its model loaded."""

    path: Path
    model: Any  # an hf_vae AutoencoderPreTrainedModel
    metrics: Dict[str, Any]
    training_args: Dict[str, Any]
    reconstructions: Optional[Path]
    samples: Optional[Path]


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise OutputDirError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e
    except OSError as e:
        raise OutputDirError(f"Could not read {path}: {e}.") from e


def load_model(path: Union[str, os.PathLike]):
    """Load the hf_vae model saved in `path` (config.json + safetensors weights), refusing partial checkpoints.

    Every weight of the model must come from the checkpoint: missing, unexpected or wrongly shaped tensors are an
    `OutputDirError`, not a warning, so a truncated or mismatched checkpoint is never pushed.
    """
    from hf_vae import MODELS

    path = Path(path)
    config = _read_json(path / "config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODELS:
        raise OutputDirError(f"{path / 'config.json'} has model_type {model_type!r}; expected one of hf_vae's model "
                             f"types {sorted(MODELS)}.")
    model_class = MODELS[model_type][1]
    try:
        model, info = model_class.from_pretrained(path, output_loading_info=True)
    except Exception as e:
        raise OutputDirError(f"Could not load the {model_class.__name__} saved in {path} (a truncated or partly copied "
                             f"weights file?): {type(e).__name__}: {e}") from e
    problems = {kind: sorted(map(str, info.get(kind) or ())) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems or info.get("error_msgs"):
        details = "; ".join(f"{kind.replace('_', ' ')}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
                            for kind, keys in problems.items())
        raise OutputDirError(f"The checkpoint in {path} does not match its config ({model_class.__name__}): "
                             f"{details or info.get('error_msgs')}. Expected every weight of the model in the checkpoint.")
    return model.eval()


def normalise_metrics(metrics: Optional[Mapping[str, Any]], *, training_args: Optional[Mapping[str, Any]] = None,
                      where: str = "metrics") -> Optional[Dict[str, Any]]:
    """Check a metrics record and return it as {"model", "dataset", "split", "step", "metrics": {name: float}}.

    Accepts the trainer's metrics.json record, or a plain {name: value} mapping (then the dataset comes from
    `training_args` and split/step are unknown). Every value must be a finite real number.
    """
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise OutputDirError(f"Expected {where} to be a JSON object, got {type(metrics).__name__}.")
    if "metrics" in metrics:
        record = dict(metrics)
        expected = {"model": str, "dataset": str, "split": str, "step": int, "metrics": Mapping}
        for key, kind in expected.items():
            value = record.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise OutputDirError(f"Expected {where}[{key!r}] to be a {kind.__name__ if kind is not Mapping else 'JSON object'}"
                                     f", got {value!r}. The record format is {{\"model\": name, \"dataset\": name, "
                                     f"\"split\": \"test\", \"step\": int, \"metrics\": {{name: float}}}}.")
    else:
        args = training_args or {}
        record = {"model": args.get("model"), "dataset": args.get("dataset"), "split": None,
                  "step": args.get("max_steps"), "metrics": dict(metrics)}
    values = {}
    for name, value in record["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OutputDirError(f"Expected {where} metric {name!r} to be a finite number, got {value!r}.")
        values[str(name)] = float(value)
    record["metrics"] = values
    return record


def read_output_dir(output_dir: Union[str, os.PathLike]) -> TrainingOutput:
    """Validate a training output directory and load its model, metrics and training arguments.

    Raises `OutputDirError` naming every missing file at once, any unreadable JSON, a metrics.json or
    training_args.json that belongs to another model type, or a checkpoint that does not match its config.
    """
    path = Path(output_dir)
    if not path.exists():
        raise OutputDirError(f"Training output directory {str(path)!r} does not exist.")
    if not path.is_dir():
        raise OutputDirError(f"Expected a training output directory, got the file {str(path)!r}.")
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        missing.insert(1, WEIGHTS_FILES[0])
    if missing:
        hint = " (only checkpoints/: did the run finish?)" if present == ["checkpoints/"] else ""
        raise OutputDirError(
            f"{str(path)!r} is not a complete training output: missing {', '.join(missing)}{hint}. Expected config.json, "
            f"model.safetensors, metrics.json and training_args.json, as the trainer writes at the end of a run; "
            f"found {present or 'nothing'}.")

    training_args = _read_json(path / "training_args.json")
    if not isinstance(training_args, dict):
        raise OutputDirError(f"Expected {path / 'training_args.json'} to hold a JSON object of the run's arguments, "
                             f"got {type(training_args).__name__}.")
    raw_metrics = _read_json(path / "metrics.json")
    if not isinstance(raw_metrics, dict) or "metrics" not in raw_metrics:
        found = sorted(raw_metrics) if isinstance(raw_metrics, dict) else type(raw_metrics).__name__
        raise OutputDirError(f"Expected {path / 'metrics.json'} to be {{\"model\": name, \"dataset\": name, \"split\": "
                             f"\"test\", \"step\": int, \"metrics\": {{name: float}}}}, got {found}.")
    metrics = normalise_metrics(raw_metrics, where=str(path / "metrics.json"))
    model = load_model(path)
    model_type = model.config.model_type
    # A prior's training run publishes its VQ-VAE with the prior attached.
    has_prior = families.of(model).capabilities.quantized and model.prior is not None
    accepted = {model_type} | (set(families.names(code_prior=True)) if has_prior else set())
    for source, name in ((path / "metrics.json", metrics.get("model")), (path / "training_args.json", training_args.get("model"))):
        if name is not None and name not in accepted:
            raise OutputDirError(f"{source} is for model {name!r} but config.json has model_type {model_type!r}; "
                                 f"the directory mixes files of different runs.")
    images = {key: (path / name if (path / name).is_file() else None) for key, name in IMAGE_FILES.items()}
    return TrainingOutput(path, model, metrics, training_args, images["reconstructions"], images["samples"])


# ------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------


def value_range(model) -> Tuple[float, float]:
    """The range of the model's data (its data contract: [0, 1] for a Bernoulli likelihood, [-1, 1] otherwise)."""
    return tuple(model.data_contract.value_range)


def image_grid(images: torch.Tensor, value_range: Tuple[float, float] = (0.0, 1.0), nrow: Optional[int] = None,
               padding: int = 2):
    """(N, C, H, W) images with C in (1, 3) and values in `value_range` -> one PIL image, `nrow` images per row."""
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Expected images of shape (N, 1 or 3, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}.")
    low, high = value_range
    x = ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if c == 1 else array, mode="L" if c == 1 else "RGB")


def compose_preview(panels: Sequence[Tuple[str, Any]], min_height: int = 256):
    """Put titled panels (PIL images or paths to images) side by side on one white RGB image.

    Small images (8×8 digits, 28×28 grids) are enlarged by an integer factor without smoothing, so pixels stay
    visible; every panel ends up the same height.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not panels:
        raise ValueError("Expected at least one (title, image) panel, got none.")
    loaded = []
    for title, image in panels:
        if not isinstance(image, Image.Image):
            try:
                with Image.open(image) as f:
                    image = f.convert("RGB")
            except Exception as e:
                raise OutputDirError(f"Could not read the {title.lower()} image {image}: {e}.") from e
        loaded.append((title, image.convert("RGB")))
    height = max(min_height, max(image.height for _, image in loaded))
    resized = []
    for title, image in loaded:
        if image.height == height:
            resized.append((title, image))
            continue
        factor = height / image.height
        size = (max(1, round(image.width * factor)), height)
        resized.append((title, image.resize(size, Image.NEAREST if factor >= 1 else Image.LANCZOS)))
    try:
        font = ImageFont.load_default(size=16)  # a scalable font where Pillow has FreeType
    except TypeError:  # pragma: no cover - Pillow < 10.1
        font = ImageFont.load_default()
    title_height, gap = 28, 16
    width = sum(image.width for _, image in resized) + gap * (len(resized) + 1)
    canvas = Image.new("RGB", (width, height + title_height + gap), "white")
    draw = ImageDraw.Draw(canvas)
    left = gap
    for title, image in resized:
        draw.text((left, 6), title, fill="black", font=font)
        canvas.paste(image, (left, title_height))
        left += image.width + gap
    return canvas


# ------------------------------------------------------------------------------------------------------------
# The card
# ------------------------------------------------------------------------------------------------------------


def default_template_dir() -> Path:
    """`$HF_VAE_MODEL_CARDS`, else `model_cards/` at the root of the hf_vae source tree, else the copy that a wheel
    installs as the package data `hf_vae.model_cards` (pyproject maps the folder there)."""
    env = os.environ.get(TEMPLATE_DIR_ENV)
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    source_tree = package.parent / "model_cards"
    return source_tree if source_tree.is_dir() else package / "model_cards"


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)) or value is None:
        return json.dumps(value)
    return str(value)


def _format_metric(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def describe_architecture(model, brief: bool = False) -> Tuple[str, str]:
    """(network, latent) in words: the model card's sentences, or with `brief` the few words of the training
    banner ("conv [32, 64]", "latent 4x8^2 (f=4)")."""
    config = model.config
    backbone = getattr(config, "backbone", "conv")  # the diffusers twin has no choice of backbone: conv
    if backbone == "mlp":
        if brief:
            return f"mlp {list(config.hidden_dims)}", f"latent {config.latent_dim}"
        network = f"MLP, hidden sizes {' → '.join(map(str, config.hidden_dims))} ({config.act_fn}); images are flattened"
    elif backbone == "burgess":
        if brief:
            latent = f"latent {config.latent_dim}"
            if config.local_latent_shape:
                channels, side, _ = config.local_latent_shape
                latent += f" + local {channels}x{side}^2"
            return f"burgess convs {list(config.block_out_channels)}, dense {list(config.hidden_dims)}", latent
        network = (f"Burgess et al. (2018)'s β-VAE network: 4x4 stride-2 convolutions with channels "
                   f"{list(config.block_out_channels)}, dense layers {list(config.hidden_dims)} ({config.act_fn}), "
                   f"transposed in the decoder")
    else:
        if brief:
            latent = f"latent {config.latent_dim}" if getattr(config, "latent_dim", None) else \
                f"latent {config.latent_channels}x{config.image_size // config.downsampling_factor}^2 " \
                f"(f={config.downsampling_factor})"
            return f"conv {list(config.block_out_channels)}", latent
        network = (f"convolutional ResNet blocks (diffusers layout), channels {list(config.block_out_channels)}, "
                   f"{config.layers_per_block} block(s) per resolution, GroupNorm({config.norm_num_groups}), "
                   f"{'with' if config.mid_block_add_attention else 'without'} mid-block attention, {config.act_fn}")
    side = None if config.vector_latent else config.image_size // config.downsampling_factor
    if families.of(model).capabilities.quantized:
        latent = (f"{config.latent_dim // config.embedding_dim} codes" if side is None else
                  f"{side}×{side} grid of codes (down-sampling ×{config.downsampling_factor})")
    elif side is None:
        latent = f"{config.latent_dim}-dimensional vector"
        if getattr(config, "local_latent_shape", None):
            latent += (f", with a {'×'.join(map(str, config.local_latent_shape))} local latent under it whose prior "
                       f"is conditional on the vector (z is their concatenation, {model.latent_shape[0]} numbers)")
    else:
        latent = f"{config.latent_channels}×{side}×{side} feature map (down-sampling ×{config.downsampling_factor})"
    return network, latent


def _describe_model(model) -> Dict[str, Any]:
    config = model.config
    low, high = value_range(model)
    data_shape = tuple(config.data_shape)
    image = len(data_shape) == 3
    span = f"[{low:g}, {high:g}]"
    backbone_text, latent = describe_architecture(model)
    capabilities = families.of(model).capabilities
    likelihood_name = getattr(config, "likelihood", "pixel")
    if capabilities.diffusers_twin:
        likelihood = f"pixel loss {config.pixel_loss.upper()} (not a normalised density)"
    elif likelihood_name == "bernoulli":
        likelihood = "Bernoulli (the decoder outputs logits; `reconstruct`/`generate` return probabilities)"
    else:
        scale = f"{config.likelihood_scale:g}" + (" (initial value; learned per channel)" if config.learn_likelihood_scale else "")
        title = {"discretized_logistic": "Discretised logistic over the 256 levels of 8-bit images"}.get(
            likelihood_name, likelihood_name.capitalize())
        likelihood = f"{title} with scale {scale}"
    if image:
        example = f"torch.rand(4, {', '.join(map(str, data_shape))})"
        example_input = example if (low, high) == (0.0, 1.0) else f"{example} * 2 - 1  # images in [-1, 1]"
        input_text = f"{'greyscale' if data_shape[0] == 1 else 'RGB' if data_shape[0] == 3 else f'{data_shape[0]}-channel'} " \
                     f"images {_shape(data_shape)} with values in {span}"
    else:
        example_input = f"torch.rand(4, {data_shape[0]})"
        input_text = f"vectors of {data_shape[0]} features" + (f" in {span}" if (low, high) == (0.0, 1.0) else "")
    return {"class_name": type(model).__name__, "num_parameters": f"{model.num_parameters():,}",
            "num_parameters_human": _human(model.num_parameters()), "backbone": backbone_text, "input": input_text,
            "latent": latent, "likelihood": likelihood, "is_image": image, "value_range": span,
            "example_input": example_input, "dtype": str(model.dtype).replace("torch.", ""),
            "prior": _describe_prior(model), "local_latent": bool(getattr(config, "local_latent_shape", None))}


def _describe_prior(model) -> Optional[str]:
    """A VQ-VAE's learned prior (in prior/), in words; None without one."""
    if not families.of(model).capabilities.quantized or model.prior is None:
        return None
    prior = model.prior
    config = prior.config
    classes = f", class-conditional ({config.num_classes} classes)" if config.num_classes else ""
    network, _, shape = config.network_description.partition(", ")
    return (f"{network} ({shape}, {_human(prior.num_parameters())} parameters) "
            f"over the {'×'.join(map(str, config.code_shape))} code map in raster order{classes}, in `prior/`")


def _describe_dataset(name: Optional[str], split: Optional[str]) -> Optional[Dict[str, Any]]:
    if not name:
        return None
    key = canonical_dataset(name)
    spec = DATASETS.get(key)
    if spec is not None:
        return {"name": key, "display": spec.display, "hub_id": spec.hub_id, "description": spec.description, "split": split}
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", str(name)) is not None and not os.path.exists(str(name))
    display = str(name) if looks_like_hub_id else Path(str(name)).name or str(name)
    return {"name": str(name), "display": display, "hub_id": str(name) if looks_like_hub_id else None,
            "description": None, "split": split}


def _flatten(args: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, so nested settings (the model config, resolved values) get one row each."""
    flat = {}
    for key, value in args.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _public_value(value: Any) -> Any:
    """Local file system paths say nothing to the card's readers (and may say too much about the machine)."""
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return "(local path)"
    return value


def _describe_training(training_args: Optional[Mapping[str, Any]], metrics: Optional[Mapping[str, Any]]):
    if not training_args and not metrics:
        return None
    args = dict(training_args or {})
    effective = {**args, **(args.get("resolved") if isinstance(args.get("resolved"), Mapping) else {})}
    shown = {key: _public_value(value) for key, value in sorted(_flatten(args).items())
             if key.split(".")[0] not in _NOT_HYPERPARAMETERS and not _SECRET.search(key)}
    key_rows, labels = [], set()
    for name, label in _KEY_TRAINING_ARGS:
        if effective.get(name) is not None and label not in labels:
            key_rows.append((label, _format_value(_public_value(effective[name]))))
            labels.add(label)
    steps = effective.get("max_steps") if effective.get("max_steps") is not None else (metrics or {}).get("step")
    return {"steps": f"{steps:,}" if isinstance(steps, int) else None, "key_rows": key_rows,
            "hyperparameters": [(k, _format_value(v)) for k, v in shown.items()], "args": args}


def _describe_metrics(metrics: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for name, value in (metrics or {}).get("metrics", {}).items():
        spec = METRICS.get(name, MetricSpec(name, UNKNOWN, None, "not an hf_vae metric: its unit and direction "
                                                                   "were not recorded"))
        better = UNKNOWN if spec.higher_is_better is None else "higher" if spec.higher_is_better else "lower"
        rows.append({"name": name, "label": spec.label, "value": value, "value_str": _format_metric(value),
                     "unit": spec.unit, "better": better, "description": spec.description})
    return rows


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRAINED = {"all": "every weight was trained",
            "decoder": "only the decoder was trained; the encoder and quant_conv are the base model's, bit for bit, so "
                       "the latent space is unchanged and diffusion models trained on the base model's latents keep "
                       "working"}


def _describe_pretrained(args: Mapping[str, Any], metrics: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The model a fine-tune started from (training_args.json's `pretrained`), what was trained, and the metrics
    of the starting model next to the fine-tuned one's (metrics.json's `pretrained.metrics`)."""
    source = args.get("pretrained")
    name = (source or {}).get("name_or_path") or args.get("pretrained_model_name_or_path")
    if not name:
        return None
    source = dict(source or {})
    hub_id = name if _HUB_ID.match(str(name)) and source.get("format") != "ldm" and not os.path.exists(str(name)) \
        else None
    train_modules = args.get("train_modules") or "all"
    before = ((metrics or {}).get("pretrained") or {}).get("metrics") or {}
    after = (metrics or {}).get("metrics") or {}
    comparison = []
    for key in after:
        if key in before:
            spec = METRICS.get(key, MetricSpec(key, "", True, ""))
            comparison.append({"label": spec.label, "before": _format_metric(before[key]),
                               "after": _format_metric(after[key]), "change": f"{after[key] - before[key]:+.4g}",
                               "better": "higher" if spec.higher_is_better else "lower"})
    return {"name": str(name), "hub_id": hub_id, "revision": source.get("revision") or args.get("pretrained_revision"),
            "subfolder": source.get("subfolder") or args.get("pretrained_subfolder"),
            "format": source.get("format"), "train_modules": train_modules,
            "trained": _TRAINED.get(train_modules, train_modules), "comparison": comparison}


def build_card_context(model, *, repo_id: Optional[str] = None, metrics: Optional[Mapping[str, Any]] = None,
                       training_args: Optional[Mapping[str, Any]] = None, image: Optional[str] = "preview.png",
                       diffusers_copy: Optional[bool] = None, license: str = DEFAULT_LICENSE) -> Dict[str, Any]:
    """Everything a template can use. `metrics` must already be normalised (see `normalise_metrics`)."""
    from huggingface_hub import EvalResult, ModelCardData

    import hf_vae

    model_type = model.config.model_type
    family = families.of(model)
    if family.card is None:
        raise ModelCardTemplateError(f"No model card description for model_type {model_type!r}; expected one of "
                                     f"{sorted(name for name, f in families.FAMILIES.items() if f.card)}.")
    variant = family.card
    if diffusers_copy is None:
        diffusers_copy = family.capabilities.diffusers_twin
    args = dict(training_args or {})
    dataset = _describe_dataset((metrics or {}).get("dataset") or args.get("dataset"), (metrics or {}).get("split"))
    model_info = _describe_model(model)
    model_name = repo_id.split("/")[-1] if repo_id else \
        f"{model_type}-{dataset['name'].split('/')[-1]}" if dataset else model_type
    metric_rows = _describe_metrics(metrics)
    eval_results = None
    if metric_rows:
        task_type, task_name = variant.task
        eval_results = [EvalResult(task_type=task_type, task_name=task_name,
                                   dataset_type=(dataset["hub_id"] or dataset["name"]) if dataset else "unknown",
                                   dataset_name=dataset["display"] if dataset else "unknown",
                                   dataset_split=dataset["split"] if dataset else None,
                                   metric_type=row["name"], metric_name=row["label"], metric_value=row["value"])
                        for row in metric_rows]
    tags = ["hf_vae", "pytorch", *variant.tags] + (["diffusers"] if diffusers_copy else [])
    pretrained = _describe_pretrained(args, metrics)
    card_data = ModelCardData(
        license=license, library_name="transformers", tags=tags,
        datasets=[dataset["hub_id"]] if dataset and dataset["hub_id"] else None,
        pipeline_tag=variant.pipeline_tag if model_info["is_image"] else None,
        model_name=model_name, eval_results=eval_results,
        base_model=pretrained["hub_id"] if pretrained else None,
    )
    return {
        "card_data": card_data.to_yaml(),
        "model_name": model_name,
        "repo_id": repo_id,
        "repo": repo_id or "REPO_ID",
        "variant": {"name": model_type, "title": variant.title},
        "config": model.config,
        "model": model_info,
        "dataset": dataset,
        "training": _describe_training(training_args, metrics),
        "metrics": metric_rows,
        "evaluation": {"split": (metrics or {}).get("split"), "step": (metrics or {}).get("step")} if metrics else None,
        "image": image,
        "has_diffusers": bool(diffusers_copy),
        "pretrained": pretrained,
        "hf_vae_version": hf_vae.__version__,
    }


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped (GitHub-flavoured Markdown)."""
    return " ".join(str(value).split("\n")).replace("|", "\\|")


def md_code_cell(value: Any) -> str:
    """`value` as inline code inside a Markdown table cell."""
    text = md_cell(value)
    fence = "``" if "`" in text else "`"
    return f"{fence}{' ' if fence == '``' else ''}{text}{' ' if fence == '``' else ''}{fence}"


def _template_location(tb) -> str:
    """'file.md.j2, line N' of the innermost template frame of a traceback (Jinja2 rewrites frames to templates)."""
    where = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(TEMPLATE_SUFFIX):
            where = f"{Path(filename).name}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return where or "unknown location"


def render_template(name: str, context: Mapping[str, Any], template_dir: Union[str, os.PathLike, None] = None) -> str:
    """Render `template_dir/name` with `context`; every template problem becomes a `ModelCardTemplateError`."""
    import jinja2

    folder = Path(template_dir) if template_dir is not None else default_template_dir()
    if not folder.is_dir():
        raise ModelCardTemplateError(f"Model card template folder {str(folder)!r} does not exist; expected the "
                                     f"`model_cards/` folder of hf_vae (or set {TEMPLATE_DIR_ENV} / pass template_dir).")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters.update(md_cell=md_cell, md_code_cell=md_code_cell)
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as e:
        available = sorted(p.name for p in folder.glob(f"*{TEMPLATE_SUFFIX}"))
        raise ModelCardTemplateError(f"Model card template {e.name!r} not found in {str(folder)!r}; expected one "
                                     f"template per model type, found {available or 'none'}.") from e
    except jinja2.TemplateSyntaxError as e:
        raise ModelCardTemplateError(f"Syntax error in model card template {Path(e.filename or e.name or name).name}, "
                                     f"line {e.lineno}: {e.message}") from e
    except Exception as e:  # UndefinedError, a filter applied to the wrong type, ...
        where = _template_location(e.__traceback__)
        context = "" if where.startswith(name) else f" (rendering {name})"
        raise ModelCardTemplateError(f"Model card template error at {where}{context}: {type(e).__name__}: {e}") from e


def check_card(text: str, template: str, expected_metrics: int):
    """Parse a rendered card with huggingface_hub and check its metadata survived the template."""
    from huggingface_hub import ModelCard

    if not text.startswith("---\n"):
        raise ModelCardTemplateError(f"Model card template {template} must start with the metadata block "
                                     f"'---\\n{{{{ card_data }}}}\\n---', got {text[:40]!r}.")
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as e:
        raise ModelCardTemplateError(f"The card rendered from {template} has invalid YAML metadata: {e}") from e
    found = len(card.data.eval_results or [])
    if not card.data.library_name or found != expected_metrics:
        raise ModelCardTemplateError(f"The card rendered from {template} lost its metadata: expected library_name and "
                                     f"{expected_metrics} model-index results, got library_name="
                                     f"{card.data.library_name!r} and {found} results.")
    return card


def render_model_card(source, *, repo_id: Optional[str] = None, metrics: Optional[Mapping[str, Any]] = None,
                      training_args: Optional[Mapping[str, Any]] = None, image: Optional[str] = "preview.png",
                      diffusers_copy: Optional[bool] = None, license: str = DEFAULT_LICENSE,
                      template_dir: Union[str, os.PathLike, None] = None):
    """Render the model card of a trained model, as a `huggingface_hub.ModelCard`.

    Args:
        source: a training output directory (its metrics.json and training_args.json are used unless `metrics` /
            `training_args` are given) or an hf_vae model.
        repo_id: the Hub repository the card is for; used in the title and in the usage snippets.
        metrics: a metrics.json record or a plain {name: value} mapping; None for no evaluation section.
        training_args: the run's arguments (a training_args.json object).
        image: path, relative to the repository root, of the preview image the card shows (None: no image).
        diffusers_copy: whether the repository has a diffusers copy under `vae/` (default: for the KLAE).
        license: license identifier for the metadata.
        template_dir: folder of the templates (default: `default_template_dir()`).

    Raises:
        ModelCardTemplateError: a template is missing or broken (with template name and line).
        OutputDirError: `source` is not a complete training output directory, or metrics are malformed.
    """
    if isinstance(source, (str, os.PathLike)):
        output = read_output_dir(source)
        model = output.model
        training_args = output.training_args if training_args is None else training_args
        metrics = output.metrics if metrics is None else metrics
    elif isinstance(source, torch.nn.Module):
        model = source
    else:
        raise TypeError(f"Expected a training output directory or an hf_vae model, got {type(source).__name__}.")
    metrics = normalise_metrics(metrics, training_args=training_args)
    context = build_card_context(model, repo_id=repo_id, metrics=metrics, training_args=training_args, image=image,
                                 diffusers_copy=diffusers_copy, license=license)
    name = f"{model.config.model_type}{TEMPLATE_SUFFIX}"
    text = render_template(name, context, template_dir)
    return check_card(text, name, len(context["metrics"]))
