"""Checks on what enters a model (images, latents, request sizes), each failing with one line that names what was
expected and what was given.

Value checks (range, finiteness) read tensor values, which `torch.export` and `torch.compile(fullgraph=True)`
cannot trace (a data-dependent Python branch). They run eagerly and are left out of traced graphs (`is_tracing`);
shape and dtype checks are static and run in both.
"""

import contextlib
import math
from typing import Optional, Tuple

import torch

#: the most importance samples `log_likelihood` takes in one call (Burda et al. use 5000; run time is linear in K)
MAX_IMPORTANCE_SAMPLES = 1_000_000


def is_tracing() -> bool:
    """Whether the code runs under torch.compile / torch.export tracing (or TorchScript), not eagerly."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if compiler.is_compiling():
            return True
        is_exporting = getattr(compiler, "is_exporting", None)
        if is_exporting is not None and is_exporting():
            return True
    return torch.jit.is_scripting() or torch.jit.is_tracing()


def check_count(name: str, value, maximum: Optional[int] = None) -> None:
    """`value` is a positive int (not a bool, a float or a string), at most `maximum` when given."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"Expected a positive int `{name}`, got {value!r}"
                         f"{f' (a {type(value).__name__})' if not isinstance(value, int) else ''}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"Expected `{name}` <= {maximum:,} (the limit of one call), got {value:,}; split the request "
                         f"into several calls.")


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes that can still be allocated on `device` (free GPU memory, or the host's MemAvailable); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(request: str, nbytes: int, device: torch.device) -> None:
    """Refuse a request whose result alone needs more memory than `device` has available, naming both."""
    available = available_memory(device)
    if available is not None and nbytes > available:
        raise ValueError(f"{request} needs {nbytes / 2**30:.1f} GiB for its result, more than the {available / 2**30:.1f} "
                         f"GiB available on {device}: expected a request that fits; ask for fewer at a time.")


def check_pixel_values(model, pixel_values: torch.Tensor, check_values: bool = True) -> torch.Tensor:
    """Check the images (or flat data) where they enter `model`; return them in the model's dtype.

    Floating-point inputs of another dtype (float64, float16, bfloat16) are cast to the model's dtype; integer
    inputs are refused (their scale is ambiguous). The range and finiteness are checked with one fused reduction
    (`aminmax`) and one device synchronisation: NaN or ±inf show up in the minimum or maximum.
    """
    config = model.config
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"Expected `pixel_values` to be a torch.Tensor, got {type(pixel_values).__name__}.")
    if not pixel_values.is_floating_point():
        raise ValueError(f"Expected floating-point `pixel_values`, got dtype {pixel_values.dtype} "
                         f"(convert integer images with x.float() / 255).")
    expected = config.data_shape
    what = "(B, C, H, W)" if len(expected) == 3 else "(B, D)"
    if pixel_values.dim() != len(expected) + 1:
        raise ValueError(f"Expected `pixel_values` of shape {what} = (B, {', '.join(map(str, expected))}), "
                         f"got shape {tuple(pixel_values.shape)}.")
    if pixel_values.shape[0] == 0:
        raise ValueError(f"Expected at least one example in `pixel_values`, got an empty batch of shape "
                         f"{tuple(pixel_values.shape)}.")
    if pixel_values.shape[1] != expected[0]:
        raise ValueError(f"Expected {expected[0]} channels at dim 1 of `pixel_values`, got shape {tuple(pixel_values.shape)}.")
    if len(expected) == 3:
        _check_image_size(config, *pixel_values.shape[-2:])
    if check_values and not is_tracing():
        low, high = torch.stack(torch.aminmax(pixel_values.detach())).tolist()  # the one sync
        _check_value_range(model, low, high)
    return pixel_values.to(model.dtype)


def _check_image_size(config, height, width) -> None:
    if config.vector_latent:
        if (height, width) != tuple(config.data_shape[1:]):
            raise ValueError(f"Expected images of size {config.data_shape[1]}x{config.data_shape[2]} (image_size, "
                             f"fixed by the {'MLP' if config.backbone == 'mlp' else 'dense bottleneck'}), got "
                             f"{height}x{width}.")
        return
    factor = config.downsampling_factor
    if height == 0 or width == 0 or height % factor or width % factor:
        raise ValueError(f"Expected image height and width positive and divisible by the down-sampling "
                         f"factor {factor}, got {height}x{width}.")


def _check_value_range(model, low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"Expected finite `pixel_values`, got NaN or infinite values (range [{low}, {high}]).")
    data_range = model.likelihood.data_range
    if data_range is not None and (low < data_range[0] or high > data_range[1]):
        raise ValueError(f"Expected `pixel_values` in [{data_range[0]}, {data_range[1]}] for the "
                         f"{model.config.likelihood} likelihood, got values in [{low:.4g}, {high:.4g}].")
    input_range: Optional[Tuple[float, float]] = model.input_range
    if data_range is None and input_range is not None and model.check_input_range and (
            low < input_range[0] or high > input_range[1]):
        raise ValueError(f"Expected `pixel_values` in [{input_range[0]:g}, {input_range[1]:g}] for "
                         f"{type(model).__name__}, got values in [{low:.4g}, {high:.4g}] (images in [0, 1] map "
                         f"with 2 * x - 1, in [0, 255] with x / 127.5 - 1; set `model.check_input_range = False` "
                         f"to pass other values on purpose).")


def check_latents(model, latents: torch.Tensor) -> torch.Tensor:
    """Check latents where they enter `decode`; return them in the model's dtype (floats of another dtype are cast,
    as for images)."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise ValueError(f"Expected floating-point latents, got {getattr(latents, 'dtype', type(latents))}.")
    expected = model.latent_shape
    if latents.dim() != len(expected) + 1 or latents.shape[1] != expected[0] or (
        model.config.vector_latent and tuple(latents.shape[1:]) != expected
    ):
        raise ValueError(f"Expected latents of shape (B, {', '.join(map(str, expected))}), got {tuple(latents.shape)}.")
    if latents.shape[0] == 0 or latents.numel() == 0:
        raise ValueError(f"Expected at least one latent, got an empty tensor of shape {tuple(latents.shape)}.")
    if not is_tracing():  # one reduction and sync per decode; a NaN in would decode to a silently NaN image
        bad = int((~torch.isfinite(latents)).sum())
        if bad:
            raise ValueError(f"Expected finite latents, got {bad} NaN or infinite values of {latents.numel()} "
                             f"(shape {tuple(latents.shape)}).")
    return latents.to(model.dtype)


def condition_argument(model, condition, kwargs: dict):
    """`forward`'s `condition`, or its alias `labels`; any other keyword is refused with its name."""
    labels = kwargs.pop("labels", None)
    if kwargs:
        raise TypeError(f"{type(model).__name__}.forward() got unexpected keyword arguments {sorted(kwargs)}; "
                        f"expected pixel_values, condition (or labels), return_dict, sample_posterior, generator, "
                        f"output_hidden_states, return_loss.")
    if labels is not None and condition is not None:
        raise ValueError("Expected either `condition` or its alias `labels`, got both.")
    return condition if condition is not None else labels


class InputChecksMixin:
    """What the models check where inputs enter them (`check_pixel_values`, `check_latents`), and the switch a
    caller that vouches for its inputs turns the value checks off with (`inputs_checked_by_caller`)."""

    #: the range the inputs are expected in when the likelihood does not fix one (the KLAE: [-1, 1]); checked
    #: unless `check_input_range` is set to False on the model (for users who know what they are doing)
    input_range: Optional[Tuple[float, float]] = None
    check_input_range: bool = True
    #: False inside `inputs_checked_by_caller()`
    _check_input_values: bool = True

    @contextlib.contextmanager
    def inputs_checked_by_caller(self):
        """Skip the value checks of `check_pixel_values` (range and finiteness: a reduction and a device
        synchronisation per forward) inside the block, for a caller that vouches for its inputs. The trainer
        does: its streams produce values in range by construction, and a NaN or infinity in the inputs makes the
        loss non-finite, which it checks in its one synchronisation per step. Shapes and dtypes are still checked."""
        previous = self._check_input_values
        self._check_input_values = False
        try:
            yield self
        finally:
            self._check_input_values = previous

    def check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check the images (or flat data) where they enter the model; return them in the model's dtype. Value
        checks run eagerly, not inside `inputs_checked_by_caller()` or a trace."""
        return check_pixel_values(self, pixel_values, check_values=self._check_input_values)

    def check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Check latents where they enter `decode`; return them in the model's dtype."""
        return check_latents(self, latents)
