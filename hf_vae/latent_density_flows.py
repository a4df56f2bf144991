"""Autoregressive flows as ex-post latent densities (pythae's MAFSampler and IAFSampler), built from the MADE of
`flows.py` and fitted by maximum likelihood to the encoded training latents.

    MAF (Papamakarios et al. 2017, eqs. 3-5): density direction in one pass per step,
        u_i = (z_i − μ_i(z_<i)) · exp(−α_i(z_<i)),   log p(z) = log N(u; 0, I) − Σ_i α_i;
        sampling inverts it, one dimension at a time.
    IAF (Kingma et al. 2016, eq. 14, `flows.InverseAutoregressiveFlow`): sampling direction in one pass per step,
        z = σ(u) ⊙ u + (1 − σ(u)) ⊙ m(u),   log p(z) = log N(u; b, diag e^{2s}) − Σ_i log σ_i;
        the density inverts it, one dimension at a time (fitting is the slower direction, sampling the faster).
        Each step contracts (σ < 1, the stable parametrisation of Kingma et al.'s sec. 4), so the base is a
        diagonal Gaussian with a learned mean b and log-scale s, which starts wide enough that the whole map is
        about the identity in scale.

Steps alternate the autoregressive order, so that every dimension depends on every other after two.

An autoregressive map y = g(x) whose i-th output depends on x_<i (in its order) is inverted in D rounds: round t
solves the dimension of degree t from the dimensions already solved. The unsolved ones stay 0 until their round,
so no intermediate value can overflow (a masked weight multiplies it by 0, and 0·inf would be NaN).
"""

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .flows import MADE, InverseAutoregressiveFlow
from .learned_latent_density import LearnedLatentDensity, standard_normal_log_prob


def _invert_autoregressive(made: MADE, y: torch.Tensor, solve) -> torch.Tensor:
    """x with y = g(x), g autoregressive under `made`'s order: `solve(y, *made(x))` gives every dimension of x from
    the network's outputs, exact for the dimensions whose inputs are already solved."""
    degrees = torch.tensor(made.hidden[0].in_degrees, device=y.device)  # input i's position in the order, 1..D
    x = torch.zeros_like(y)
    for degree in range(1, y.shape[-1] + 1):
        x = torch.where(degrees == degree, solve(y, *made(x)), x)
    return x


def _orders(dim: int, num_flows: int):
    forward, reverse = list(range(dim)), list(range(dim - 1, -1, -1))
    return [forward if k % 2 == 0 else reverse for k in range(num_flows)]


def _check_sizes(kind: str, num_flows, hidden_dims) -> None:
    if not (isinstance(num_flows, int) and not isinstance(num_flows, bool) and num_flows > 0):
        raise ValueError(f"Expected a positive int num_flows for the {kind} density, got {num_flows!r}.")
    if not (isinstance(hidden_dims, (list, tuple)) and hidden_dims
            and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden_dims)):
        raise ValueError(f"Expected hidden_dims of the {kind} density as a non-empty list of positive ints, got "
                         f"{hidden_dims!r}.")


class MaskedAutoregressiveStep(nn.Module):
    """One MAF step: z -> u = (z − μ(z)) ⊙ exp(−α(z)) with log|det ∂u/∂z| = −Σ α; `inverse` maps u back to z."""

    #: |α| is kept below this (a soft clamp), so that one step scales a dimension by at most e^5
    max_log_scale = 5.0

    def __init__(self, dim: int, hidden_dims: Sequence[int], order: Sequence[int]):
        super().__init__()
        self.made = MADE(dim, hidden_dims, num_outputs=2, order=order)

    def shift_and_log_scale(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.made(z)
        return mean, self.max_log_scale * torch.tanh(raw / self.max_log_scale)

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.shift_and_log_scale(z)
        return (z - mean) * torch.exp(-log_scale), -log_scale.sum(-1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        def solve(u, mean, raw):
            return u * torch.exp(self.max_log_scale * torch.tanh(raw / self.max_log_scale)) + mean

        return _invert_autoregressive(self.made, u, solve)


class MAFDensity(LearnedLatentDensity):
    """p(z) by a masked autoregressive flow to N(0, I) (Papamakarios et al. 2017)."""

    kind = "maf"

    def __init__(self, dim: int, num_flows: int = 5, hidden_dims: Sequence[int] = (128, 128)):
        _check_sizes(self.kind, num_flows, hidden_dims)
        super().__init__(dim)
        self.hidden_dims = list(hidden_dims)
        self.steps = nn.ModuleList(MaskedAutoregressiveStep(dim, hidden_dims, order)
                                   for order in _orders(dim, num_flows))

    @property
    def settings(self) -> Dict[str, Any]:
        return {"num_flows": len(self.steps), "hidden_dims": self.hidden_dims}

    def standard_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        total = u.new_zeros(u.shape[0])
        for step in self.steps:
            u, log_det = step(u)
            total = total + log_det
        return standard_normal_log_prob(u) + total

    def standard_sample(self, num_samples: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        u = self.noise(num_samples, generator)
        for step in reversed(self.steps):
            u = step.inverse(u)
        return u


def _invert_iaf_step(step: InverseAutoregressiveFlow, y: torch.Tensor) -> torch.Tensor:
    """x with step(x) = y: y = σ(x)·x + (1 − σ(x))·m(x), so x = (y − (1 − σ)·m) / σ given x's earlier dimensions."""
    def solve(y, mean, gate):
        sigma = torch.sigmoid(gate + 1.0)
        return (y - (1 - sigma) * mean) / sigma

    return _invert_autoregressive(step.made, y, solve)


class IAFDensity(LearnedLatentDensity):
    """p(z) as the push-forward of N(0, I) through inverse autoregressive flows (Kingma et al. 2016)."""

    kind = "iaf"

    def __init__(self, dim: int, num_flows: int = 5, hidden_dims: Sequence[int] = (128, 128)):
        _check_sizes(self.kind, num_flows, hidden_dims)
        super().__init__(dim)
        self.hidden_dims = list(hidden_dims)
        self.steps = nn.ModuleList(InverseAutoregressiveFlow(dim, hidden_dims, order=order)
                                   for order in _orders(dim, num_flows))
        self.base_mean = nn.Parameter(torch.zeros(dim))
        self.base_log_scale = nn.Parameter(torch.full((dim,), self.initial_base_log_scale(num_flows)))

    @staticmethod
    def initial_base_log_scale(num_flows: int) -> float:
        """−num_flows · log σ(1): undoes the steps' contraction at initialisation (gate ≈ 0, σ ≈ sigmoid(1))."""
        return num_flows * math.log1p(math.exp(-1.0))

    @property
    def settings(self) -> Dict[str, Any]:
        return {"num_flows": len(self.steps), "hidden_dims": self.hidden_dims}

    def standard_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        # invert the steps from the last, then the density of the noise minus every forward step's log|det|
        total = u.new_zeros(u.shape[0])
        for step in reversed(self.steps):
            u = _invert_iaf_step(step, u)
            mean, gate = step.made(u)
            total = total + F.logsigmoid(gate + 1.0).sum(-1)
        eps = (u - self.base_mean) * torch.exp(-self.base_log_scale)
        return standard_normal_log_prob(eps) - self.base_log_scale.sum() - total

    def standard_sample(self, num_samples: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        u = self.base_mean + torch.exp(self.base_log_scale) * self.noise(num_samples, generator)
        for step in self.steps:
            u, _ = step(u)
        return u
