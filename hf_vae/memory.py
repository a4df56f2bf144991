"""Will a model of this config fit? An estimate from the config, made before anything is allocated.

`latent_dim=10**8` or an IWAE with `num_importance_samples=10**7` would otherwise be found by the kernel's
out-of-memory killer, minutes later or on another machine's swap. `check_fits_in_memory` builds the model on the
`meta` device (shapes only, no storage) to count its parameters exactly, adds a rough upper estimate of one
training step's activations, and refuses what exceeds the memory available, naming the config field that is
furthest above its default.

The estimate is deliberately generous to the run (it refuses what cannot fit, not what might not): parameters x 4
copies (weights, gradients, Adam's two moments) and the activations of each resolution of each example.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Optional, Tuple

import torch

#: bytes per float32 value
_FLOAT = 4
#: weights + gradients + Adam's two moments
_COPIES_PER_PARAMETER = 4


def available_bytes(device: Optional[torch.device] = None) -> Optional[int]:
    """Free memory of `device` (a CUDA device's free memory, else the machine's available RAM); None if unknown."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def parameter_count(model_class, config) -> Optional[int]:
    """The model's parameter count, from a copy built on the meta device (no storage); None if it cannot be."""
    try:
        with torch.device("meta"):
            model = model_class(config)
    except Exception:  # a model whose construction computes with real values: no estimate
        return None
    return sum(p.numel() for p in model.parameters())


def activation_bytes(config, batch_size: int) -> int:
    """A rough estimate of one training step's activations: every (importance) sample of the batch through every
    layer, kept for the backward pass (an order of magnitude, not a bound: it refuses what cannot fit, not what
    might not)."""
    samples = batch_size * int(getattr(config, "num_importance_samples", 1) or 1)
    shape = getattr(config, "data_shape", None) or ()
    pixels = math.prod(shape[1:]) if len(shape) == 3 else 1
    widths = [int(w) for w in list(getattr(config, "hidden_dims", None) or []) + [getattr(config, "latent_dim", 0) or 0]]
    channels = [int(c) for c in getattr(config, "block_out_channels", None) or []]
    per_example = math.prod(shape) if shape else 0
    per_example += 2 * sum(widths)  # dense layers (and μ, log σ² of the latent)
    if getattr(config, "backbone", "conv") != "mlp" and channels:
        # each resolution holds a quarter of the previous one's pixels; a ResNet block keeps ~2 maps per layer
        layers = int(getattr(config, "layers_per_block", 1) or 1) + 1
        per_example += sum(pixels // 4 ** level * width * 2 * layers for level, width in enumerate(channels))
    return samples * per_example * _FLOAT * 2  # encoder and decoder


def _furthest_from_default(config) -> Tuple[str, object]:
    """(name, value) of the size field furthest above its default: the likely cause of a config too large."""
    try:
        defaults = type(config)().to_dict()
    except Exception:
        defaults = {}
    best, best_ratio = ("", None), 0.0
    for name, value in config.to_dict().items():
        values = value if isinstance(value, (list, tuple)) else [value]
        default = defaults.get(name)
        default_values = default if isinstance(default, (list, tuple)) else [default]
        numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        reference = max([d for d in default_values if isinstance(d, (int, float)) and not isinstance(d, bool)
                         and d > 0] or [1])
        if numbers and max(numbers) / reference > best_ratio:
            best, best_ratio = (name, value), max(numbers) / reference
    return best


def estimate_training_bytes(model_class, config, batch_size: int) -> Dict[str, Optional[int]]:
    params = parameter_count(model_class, config)
    return {"parameters": params,
            "parameter_bytes": None if params is None else params * _FLOAT * _COPIES_PER_PARAMETER,
            "activation_bytes": activation_bytes(config, batch_size)}


def check_fits_in_memory(model_class, config, batch_size: int = 1, device: Optional[torch.device] = None) -> None:
    """Refuse a config whose training would need more memory than `device` has, naming the likely field."""
    available = available_bytes(device)
    if available is None:
        return
    estimate = estimate_training_bytes(model_class, config, batch_size)
    needed = (estimate["parameter_bytes"] or 0) + estimate["activation_bytes"]
    if needed <= available:
        return
    name, value = _furthest_from_default(config)
    cause = f"`{name}`={value!r}" if name else "its sizes"
    params = "" if estimate["parameters"] is None else f"{estimate['parameters']:,} parameters, "
    where = "this machine" if device is None or device.type == "cpu" else str(device)
    raise ValueError(f"{type(config).__name__} with {cause} would need about {needed / 2**30:,.1f} GiB to train "
                     f"({params}activations of a batch of {batch_size}), and {where} has "
                     f"{available / 2**30:,.1f} GiB available: expected a smaller {name or 'model'} (checked "
                     f"before anything was allocated).")


def parameter_bound(config) -> int:
    """A quick, generous upper bound of a config's parameter count, read off its sizes without building anything:
    dense layers as if every width met every other, convolutions as if every channel count met every other at
    every layer, and the lookup tables (codebook, class embedding, pseudo-inputs). It only decides whether the
    exact count (a build on the meta device) is worth making; the trainer always makes it."""
    shape = tuple(getattr(config, "data_shape", None) or ())
    data = math.prod(shape) if shape else 0
    channels = [int(c) for c in getattr(config, "block_out_channels", None) or []]
    dense = data + int(getattr(config, "latent_dim", 0) or 0) + sum(
        int(w) for name, value in config.to_dict().items() if name.endswith("hidden_dims") for w in value or [])
    if getattr(config, "vector_latent", False) and channels and len(shape) == 3:  # the flattened conv map
        dense += max(channels) * math.prod(shape[1:])
    layers = int(getattr(config, "layers_per_block", 1) or 1) + 2
    convolutions = 9 * sum(channels) ** 2 * layers
    tables = sum(int(getattr(config, a, 0) or 0) * int(b if isinstance(b, int) else getattr(config, b, 0) or 0)
                 for a, b in (("num_embeddings", "embedding_dim"), ("num_classes", "class_embedding_dim"),
                              ("num_pseudo_inputs", data)))
    return 4 * (dense ** 2 + convolutions + tables)  # encoder and decoder, weights and biases, generously


def check_allocation_fits(model_class, config) -> None:
    """Refuse to build a model whose weights alone exceed the memory available, naming the likely config field;
    called by the model's constructor before it allocates anything (float32 weights on the CPU)."""
    if torch.empty(0).is_meta:  # inside `with torch.device("meta")`: a shapes-only build (how the count is made)
        return
    available = available_bytes(None)
    if available is None or parameter_bound(config) * _FLOAT <= available:
        return
    params = parameter_count(model_class, config)
    if params is None or params * _FLOAT <= available:
        return
    name, value = _furthest_from_default(config)
    cause = f"`{name}`={value!r}" if name else "its sizes"
    raise ValueError(f"{type(config).__name__} with {cause} has {params:,} parameters, {params * _FLOAT / 2**30:,.1f} "
                     f"GiB in float32, and this machine has {available / 2**30:,.1f} GiB available: expected a "
                     f"smaller {name or 'model'} (checked before anything was allocated).")
