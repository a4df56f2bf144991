"""Data noise, the one implementation: dynamic binarisation and uniform dequantisation of 8-bit images.

* Dynamic binarisation draws x ~ Bernoulli(intensity) afresh every time an image is seen, the binary data a
  Bernoulli likelihood is a normalised density on.
* Uniform dequantisation spreads the 8-bit level k over its cell, (k + u) / 256 with u ~ U[0, 1) (Theis et al.
  2016), so that a continuous density on the result bounds the probability of k.

Each noise is a pure function of a seed, drawn in one of two ways:

* on whole batches, on the device that trains (:class:`BatchNoise`, :func:`binarize`, :func:`dequantize`; evaluation
  uses :func:`dequantize` too): the generator is re-seeded at every micro-batch from ``(seed, process, step,
  micro-batch)`` (:func:`step_seed`), so the noise of a step does not depend on what ran before it -- a run resumed
  from a checkpoint draws exactly the noise an uninterrupted run would have drawn -- and two processes never draw
  the same noise;
* per example in the row streams (:func:`example_noise`): a numpy generator keyed by ``(seed, epoch, example)``,
  not by the stream position, so the noise is the same whatever the shuffle, sharding or worker layout, fresh each
  epoch, and reproducible.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ._hashing import content_key, mix64

__all__ = ["NUM_LEVELS", "BatchNoise", "binarize", "check_noise_args", "dequantize", "example_noise", "step_seed"]

#: 8-bit data: the number of levels a dequantised value spreads over
NUM_LEVELS = 256

_SALT_BINARIZE = 0xB1AA_5E55
_SALT_DEQUANTIZE = 0xDE0A_9715
_SALT_STEP_NOISE = 0xB1AA_57E9
_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def check_noise_args(binarize: bool, dequantize: bool) -> None:
    if binarize and dequantize:
        raise ValueError("Expected at most one of binarize and dequantize: binary data has nothing to dequantise.")


# ------------------------------------------------------------------------------------------------------------
# Whole batches (torch)
# ------------------------------------------------------------------------------------------------------------


def _uniform_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """u ~ U[0, 1) of x's shape and dtype, drawn on the generator's device (x's without one), moved to x's."""
    device = generator.device if generator is not None else x.device
    return torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def binarize(x: torch.Tensor, value_range: Sequence[float], generator: Optional[torch.Generator] = None):
    """Dynamic binarisation of images in `value_range`: ``Bernoulli((x − lo) / (hi − lo))`` mapped to ``{lo, hi}``."""
    lo, hi = value_range
    unit = (lo, hi) == (0.0, 1.0)
    probs = x if unit else (x - lo) / (hi - lo)
    # u < p with u ~ U[0, 1) is Bernoulli(p); on CPUs this is 3x faster than torch.bernoulli.
    sample = (_uniform_like(x, generator) < probs).to(x.dtype)
    return sample if unit else sample * (hi - lo) + lo


def dequantize(x: torch.Tensor, value_range: Sequence[float], generator: Optional[torch.Generator] = None):
    """Uniform dequantisation of 8-bit images in `value_range`: level k -> lo + (hi − lo)(k + u)/256, u ~ U[0, 1)."""
    lo, hi = value_range
    levels = torch.round((x - lo) / (hi - lo) * (NUM_LEVELS - 1))
    return lo + (hi - lo) * (levels + _uniform_like(x, generator)) / NUM_LEVELS


def step_seed(seed: int, process_index: int, step: int, micro: int = 0) -> int:
    """A 63-bit seed that is a pure, well-mixed function of ``(seed, process_index, step, micro)``."""
    z = mix64((int(seed) & _MASK64) ^ _SALT_STEP_NOISE)
    for part in (process_index, step, micro):
        z = mix64(z + (int(part) & _MASK64) * _GOLDEN + _GOLDEN)
    return z & _MASK63


class BatchNoise:
    """Applies the data noise of a training batch on its device.

    Args:
        seed: the run's seed.
        process_index: this process's rank (each process draws different noise).
        binarize: dynamic binarisation (:func:`binarize`).
        dequantize: uniform dequantisation of the 8-bit levels (:func:`dequantize`).
        value_range: ``(lo, hi)`` of the batch's ``pixel_values``.
        device: where the batches are (the generator lives there).
    """

    def __init__(self, seed: int, process_index: int, *, binarize: bool, value_range: Sequence[float],
                 device: torch.device, dequantize: bool = False):
        check_noise_args(binarize, dequantize)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.binarize = bool(binarize)
        self.dequantize = bool(dequantize)
        self.lo, self.hi = float(value_range[0]), float(value_range[1])
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device) if self.active else None

    @property
    def active(self) -> bool:
        return self.binarize or self.dequantize

    def __call__(self, batch: Dict[str, torch.Tensor], step: int, micro: int = 0) -> Dict[str, torch.Tensor]:
        """The batch with its noise applied (a new dict; ``pixel_values`` replaced)."""
        if not self.active:
            return batch
        generator = self._generator.manual_seed(step_seed(self.seed, self.process_index, step, micro))
        apply = dequantize if self.dequantize else binarize
        return {**batch, "pixel_values": apply(batch["pixel_values"], (self.lo, self.hi), generator)}


# ------------------------------------------------------------------------------------------------------------
# One example of a row stream (numpy)
# ------------------------------------------------------------------------------------------------------------


def example_noise(x: np.ndarray, *, binarize: bool, dequantize: bool, seed: int, epoch: int,
                  example_id: Optional[int] = None) -> np.ndarray:
    """The noise of one example's intensities `x` (float32 in [0, 1]): binarised to {0, 1}, or dequantised to
    (k + u) / 256; `x` itself when neither is asked.

    The generator is keyed by ``(seed, epoch, example_id)``; an example without an id is keyed by its pixels.
    """
    check_noise_args(binarize, dequantize)
    if not (binarize or dequantize):
        return x
    key = int(example_id) if example_id is not None else (1 << 40) + content_key(x)
    salt = _SALT_BINARIZE if binarize else _SALT_DEQUANTIZE
    u = np.random.default_rng([int(seed) & _MASK63, salt, int(epoch), key]).random(x.shape, dtype=np.float32)
    if binarize:
        return (u < x).astype(np.float32)
    return (np.round(x * float(NUM_LEVELS - 1)) + u) / float(NUM_LEVELS)
