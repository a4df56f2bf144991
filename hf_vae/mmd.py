"""Maximum mean discrepancy between samples of the aggregate posterior q(z) and of the prior p(z).

    MMD²(q, p) = E k(z, z') + E k(z̃, z̃') − 2 E k(z, z̃),    z, z' ~ q,  z̃, z̃' ~ p

estimated without bias by the U-statistic of Gretton et al. (2012, eq. 3), which leaves out the i = j terms:

    MMD²_u = Σ_{i≠j} k(z_i, z_j) / n(n−1) + Σ_{i≠j} k(z̃_i, z̃_j) / m(m−1) − 2 Σ_{i,j} k(z_i, z̃_j) / nm

Its expectation is exactly 0 when q = p (it can be negative on a batch). Kernels, with C = 2·d·σ² for
d-dimensional latents and the prior's variance σ² (Tolstikhin et al. 2018, sec. 4):

    "imq"  k(z, z̃) = Σ_s sC / (sC + ‖z − z̃‖²)        inverse multiquadratics, WAE's choice (heavier tails)
    "rbf"  k(z, z̃) = Σ_s exp(−‖z − z̃‖² / sC)         Gaussian, InfoVAE's choice

summed over the scales s (WAE's code uses s ∈ {0.1, 0.2, 0.5, 1, 2, 5, 10}).
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .configuration_wae import KERNELS
from .modeling_outputs import AutoencoderOutput
from .weight_init import init


def kernel_matrix(x: torch.Tensor, y: torch.Tensor, kernel: str, scales: Sequence[float],
                  bandwidth: float = 1.0) -> torch.Tensor:
    """(n, d), (m, d) -> (n, m) kernel values, summed over the scales."""
    if kernel not in KERNELS:
        raise ValueError(f"Expected `kernel` in {KERNELS}, got {kernel!r}.")
    # at least float32 distances: CPU has no bfloat16 cdist, and half-precision squared distances lose the small
    # ones the kernel is most sensitive to
    dtype = torch.promote_types(x.dtype, torch.float32)
    squared = torch.cdist(x.to(dtype), y.to(dtype)).pow(2)
    base = 2.0 * x.shape[1] * bandwidth ** 2
    total = torch.zeros_like(squared)
    for scale in scales:
        c = scale * base
        total = total + (c / (c + squared) if kernel == "imq" else torch.exp(-squared / c))
    return total.to(x.dtype)


def mmd_unbiased(x: torch.Tensor, y: torch.Tensor, kernel: str = "imq",
                 scales: Sequence[float] = (1.0,), bandwidth: float = 1.0) -> torch.Tensor:
    """The U-statistic MMD²_u between samples x (n, ...) and y (m, ...) (flattened per sample); shape ()."""
    x, y = x.flatten(1), y.flatten(1)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"The unbiased MMD needs at least 2 samples on each side, got {n} and {m}.")
    k_xx = kernel_matrix(x, x, kernel, scales, bandwidth)
    k_yy = kernel_matrix(y, y, kernel, scales, bandwidth)
    k_xy = kernel_matrix(x, y, kernel, scales, bandwidth)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * k_xy.mean()


#: how many fixed prior draws an eval-mode pass without a generator compares a batch with (batches up to this size)
REFERENCE_DRAWS = 1024
#: the seed of those draws
REFERENCE_SEED = 0


class PriorReferenceDraws(nn.Module):
    """A fixed set of draws from p(z) = N(0, I), (REFERENCE_DRAWS, *latent_shape): the prior samples of the MMD in
    an eval-mode pass without a generator. Fixed draws make that pass deterministic, and the same eagerly, compiled
    and exported (a generator cannot be created inside a traced graph). Recomputed from the seed, never saved."""

    def __init__(self, latent_shape):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        self.register_buffer("draws", torch.empty(REFERENCE_DRAWS, *self.latent_shape), persistent=False)
        if not self.draws.is_meta:
            self.draws.copy_(self.standard_draws())

    def standard_draws(self) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(REFERENCE_SEED)
        return torch.randn((REFERENCE_DRAWS, *self.latent_shape), generator=generator, device="cpu")

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.draws[:batch_size]


def prior_mmd(model, latents: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """MMD²_u between a batch's latents (B, ...) and as many draws from the prior N(0, I), with the model's kernel
    settings (`kernel`, `kernel_scales`, `kernel_bandwidth` of its config); shape ().

    The prior draws come from `model.sample_prior` with `generator` when one is given, or in a training pass (the
    global stream). An eval-mode pass without one compares with `model.prior_reference` (fixed draws), so that
    `model.eval()(x)` is deterministic like every other family's.
    """
    batch = latents.shape[0]
    if generator is None and not model.training and batch <= REFERENCE_DRAWS:
        prior_samples = model.prior_reference(batch).to(latents.dtype)
    else:
        prior_samples = model.sample_prior(batch, generator)
    config = model.config
    return mmd_unbiased(latents, prior_samples, config.kernel, config.kernel_scales, config.kernel_bandwidth)


@dataclass
class MMDAutoencoderOutput(AutoencoderOutput):
    """`AutoencoderOutput` plus `mmd` (`()`): the unweighted MMD²_u between the batch's latents and prior samples."""

    mmd: Optional[torch.FloatTensor] = None


class PriorMMDMixin:
    """What the MMD families (InfoVAE, WAE) share: the output with `mmd`, and the fixed prior draws
    (`prior_reference`, built by the family) recomputed from their seed when transformers initialises weights."""

    output_class = MMDAutoencoderOutput

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, PriorReferenceDraws):
            init.copy_(module.draws, module.standard_draws())
