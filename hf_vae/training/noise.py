"""Per-batch data noise drawn on the training device, from a seed that is a function of the step.

Dynamic binarisation (x ~ Bernoulli(intensity), drawn afresh every time an image is seen) used to be drawn in the
data stream, one numpy generator per example.  Here it is one kernel per batch on the device that trains, and its
generator is re-seeded at every micro-batch from ``(seed, process, step, micro-batch)``: the noise of a step does
not depend on what ran before it, so a run resumed from a checkpoint draws exactly the noise an uninterrupted run
would have drawn, and two processes never draw the same noise.

Uniform dequantisation of 8-bit levels (continuous likelihoods) is drawn the same way, with
`hf_vae.evaluation.evaluate.dequantize`, the function evaluations use.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

__all__ = ["BatchNoise", "step_seed"]

_SALT_STEP_NOISE = 0xB1AA_57E9
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """SplitMix64 finaliser on Python ints (as `hf_vae.data._hashing.mix64`, without numpy's per-call cost)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
    return z ^ (z >> 31)


def step_seed(seed: int, process_index: int, step: int, micro: int = 0) -> int:
    """A 63-bit seed that is a pure, well-mixed function of ``(seed, process_index, step, micro)``."""
    z = _mix64((int(seed) & _MASK64) ^ _SALT_STEP_NOISE)
    for part in (process_index, step, micro):
        z = _mix64((z + (int(part) & _MASK64) * _GOLDEN + _GOLDEN) & _MASK64)
    return z & ((1 << 63) - 1)


class BatchNoise:
    """Applies the data noise of a training batch on its device.

    Args:
        seed: the run's seed.
        process_index: this process's rank (each process draws different noise).
        binarize: dynamic binarisation, ``x ~ Bernoulli((x - lo) / (hi - lo))`` mapped back to ``{lo, hi}``.
        dequantize: uniform dequantisation of the 8-bit levels (see ``hf_vae.evaluation.evaluate.dequantize``).
        value_range: ``(lo, hi)`` of the batch's ``pixel_values``.
        device: where the batches are (the generator lives there).
    """

    def __init__(self, seed: int, process_index: int, *, binarize: bool, value_range: Sequence[float],
                 device: torch.device, dequantize: bool = False):
        if binarize and dequantize:
            raise ValueError("Expected at most one of binarize and dequantize: binary data has nothing to dequantise.")
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
        x = batch["pixel_values"]
        if self.dequantize:
            from ..evaluation.evaluate import dequantize

            return {**batch, "pixel_values": dequantize(x, (self.lo, self.hi), generator)}
        unit = (self.lo, self.hi) == (0.0, 1.0)
        probs = x if unit else (x - self.lo) / (self.hi - self.lo)
        # u < p with u ~ U[0, 1) is Bernoulli(p); on CPUs this is 3x faster than torch.bernoulli.
        sample = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < probs).to(x.dtype)
        return {**batch, "pixel_values": sample if unit else sample * (self.hi - self.lo) + self.lo}
