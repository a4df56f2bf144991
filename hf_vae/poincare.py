"""Distributions on the Poincaré ball B_c^d = {z ∈ R^d : c‖z‖² < 1} of curvature −c, the latent space of the
Poincaré VAE (Mathieu et al. 2019, "Continuous Hierarchical Representations with Poincaré Variational
Auto-Encoders"; Ganea et al. 2018 for the gyrovector formulas).

The ball's metric is λ_z² times the Euclidean one, λ_z = 2 / (1 − c‖z‖²) (the conformal factor), so its volume
element is dvol(z) = λ_z^d dz. The wrapped normal WN(μ, σ²) (Mathieu et al., section 3; Nagano et al. 2019) is

    u ~ N(0, diag σ²) in T_0 B (coordinates in which the metric at 0 is the Euclidean one),
    z = exp_μ(PT_{0→μ}(u / λ_0)) = μ ⊕_c (tanh(√c‖u‖/2) u / (√c‖u‖)),

and its density w.r.t. dvol (Mathieu et al., eq. 6 with the Poincaré ball's exponential-map Jacobian):

    log WN(z; μ, σ²) = log N(u(z); 0, σ²) − (d − 1) log(sinh(√c r) / (√c r)),   r = ‖u(z)‖ = d_c(μ, z),
    u(z) = λ_μ log_μ(z) = (2/√c) artanh(√c‖w‖) w / ‖w‖,   w = (−μ) ⊕_c z.

The posterior WN(μ(x), σ²(x)) and the prior WN(0, σ_p²) are densities w.r.t. the same measure dvol, so their
ratio is the importance weight of log p(x) (importance_sampling.py). Points are kept a distance `_BOUNDARY_MARGIN`
(relative to the radius 1/√c) inside the boundary, where float32 can still tell 1 − c‖z‖² from zero.
"""

import math
from typing import Optional

import torch

from .distributions import DiagonalGaussianDistribution, randn_tensor

#: relative distance from the boundary the points are kept at, per dtype: in float32, λ_z stays below 1e5 and
#: artanh's argument below 1 − 1e-5 (geodesic distances from the origin up to about 12/√c); float64 to about 24/√c
_BOUNDARY_MARGIN = {torch.float64: 1e-10}
_DEFAULT_MARGIN = 1e-5
#: below this √c·r, log(sinh(x)/x) is its Taylor series x²/6 − x⁴/180 (the closed form loses digits near 0)
_SMALL_ARGUMENT = 1e-2


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """The geometry in float32 or wider: half precision cannot tell points near the boundary from it."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _margin(dtype: torch.dtype) -> float:
    return _BOUNDARY_MARGIN.get(dtype, _DEFAULT_MARGIN)


def _norm(x: torch.Tensor, min_norm: float = 1e-15) -> torch.Tensor:
    return x.norm(dim=-1, keepdim=True).clamp_min(min_norm)


def project(z: torch.Tensor, curvature: float) -> torch.Tensor:
    """z pulled inside the ball, to at most (1 − margin)/√c from the origin."""
    max_norm = (1 - _margin(z.dtype)) / math.sqrt(curvature)
    norm = _norm(z)
    return torch.where(norm > max_norm, z / norm * max_norm, z)


def _artanh(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.atanh(x.clamp(max=1 - _margin(dtype)))


def conformal_factor(z: torch.Tensor, curvature: float) -> torch.Tensor:
    """λ_z = 2 / (1 − c‖z‖²), (..., 1)."""
    return 2 / (1 - curvature * z.pow(2).sum(-1, keepdim=True)).clamp_min(_margin(z.dtype))


def mobius_add(x: torch.Tensor, y: torch.Tensor, curvature: float) -> torch.Tensor:
    """x ⊕_c y = ((1 + 2c⟨x,y⟩ + c‖y‖²) x + (1 − c‖x‖²) y) / (1 + 2c⟨x,y⟩ + c²‖x‖²‖y‖²) (Ganea et al., eq. 2)."""
    c = curvature
    xy = (x * y).sum(-1, keepdim=True)
    x2, y2 = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1, keepdim=True)
    numerator = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return numerator / (1 + 2 * c * xy + c ** 2 * x2 * y2).clamp_min(1e-15)


def exp_map(x: torch.Tensor, v: torch.Tensor, curvature: float) -> torch.Tensor:
    """exp_x(v) = x ⊕_c (tanh(√c λ_x ‖v‖ / 2) v / (√c‖v‖)) (Ganea et al., lemma 2)."""
    sqrt_c, v_norm = math.sqrt(curvature), _norm(v)
    step = torch.tanh(sqrt_c * conformal_factor(x, curvature) * v_norm / 2) * v / (sqrt_c * v_norm)
    return project(mobius_add(x, step, curvature), curvature)


def log_map(x: torch.Tensor, y: torch.Tensor, curvature: float) -> torch.Tensor:
    """log_x(y) = (2 / (√c λ_x)) artanh(√c‖w‖) w / ‖w‖, w = (−x) ⊕_c y: the inverse of `exp_map`."""
    sqrt_c = math.sqrt(curvature)
    w = mobius_add(-x, y, curvature)
    w_norm = _norm(w)
    return 2 / (sqrt_c * conformal_factor(x, curvature)) * _artanh(sqrt_c * w_norm, y.dtype) * w / w_norm


def exp_map0(v: torch.Tensor, curvature: float) -> torch.Tensor:
    """exp_0(v) = tanh(√c‖v‖) v / (√c‖v‖) (λ_0 = 2)."""
    sqrt_c, v_norm = math.sqrt(curvature), _norm(v)
    return project(torch.tanh(sqrt_c * v_norm) * v / (sqrt_c * v_norm), curvature)


def transport_from_origin(x: torch.Tensor, v: torch.Tensor, curvature: float) -> torch.Tensor:
    """Parallel transport of v ∈ T_0 to T_x: PT_{0→x}(v) = (λ_0 / λ_x) v (Ganea et al., eq. 18; the gyration is
    the identity at 0)."""
    return 2 / conformal_factor(x, curvature) * v


def distance(x: torch.Tensor, y: torch.Tensor, curvature: float) -> torch.Tensor:
    """d_c(x, y) = (2/√c) artanh(√c ‖(−x) ⊕_c y‖), (...,)."""
    sqrt_c = math.sqrt(curvature)
    return (2 / sqrt_c * _artanh(sqrt_c * _norm(mobius_add(-x, y, curvature)), x.dtype)).squeeze(-1)


def _log_sinhc(x: torch.Tensor) -> torch.Tensor:
    """log(sinh(x)/x) for x >= 0, without overflow for large x nor cancellation near 0."""
    small = x < _SMALL_ARGUMENT
    safe = torch.where(small, torch.ones_like(x), x)
    closed = safe + torch.log1p(-torch.exp(-2 * safe)) - torch.log(2 * safe)
    return torch.where(small, x.pow(2) / 6 - x.pow(4) / 180, closed)


class WrappedNormal:
    """WN(μ, diag σ²) on the Poincaré ball of curvature −c: `loc` μ (N, d) inside the ball, `scale` σ (N, d) or
    broadcastable, of the Gaussian in T_0. Densities are w.r.t. the ball's Riemannian volume (module docstring).

    As a posterior of the skeleton (modeling_base.py) it answers `sample`, `sample_stack`, `mode`, `log_prob`; its
    `mean` is μ and its `logvar` that of the tangent Gaussian. The KL has no closed form (`kl` says so): the
    families estimate it at the sample, as pythae's PoincareVAE does."""

    deterministic = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, curvature: float = 1.0):
        if not curvature > 0:
            raise ValueError(f"Expected a positive curvature c (the ball of curvature −c), got {curvature!r}.")
        self.loc, self.scale, self.curvature = loc, scale.expand_as(loc), float(curvature)
        self.dim = loc.shape[-1]

    @classmethod
    def from_parameters(cls, parameters: torch.Tensor, curvature: float) -> "WrappedNormal":
        """From an encoder's (N, 2d) output [h, log σ²]: μ = exp_0(h), log σ² clamped as the Gaussian posterior's."""
        gaussian = DiagonalGaussianDistribution(parameters)
        loc = exp_map0(_at_least_float32(gaussian.mean), curvature).to(parameters.dtype)
        return cls(loc, gaussian.std, curvature)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def logvar(self) -> torch.Tensor:
        return 2 * torch.log(self.scale)

    def mode(self) -> torch.Tensor:
        """μ: the tangent Gaussian's density falls with r and the volume factor sinh(√c r)/(√c r) grows with it."""
        return self.loc

    def push(self, u: torch.Tensor) -> torch.Tensor:
        """z = exp_μ(PT_{0→μ}(u / λ_0)) for tangent coordinates u (..., N, d)."""
        c, loc = self.curvature, _at_least_float32(self.loc)
        return exp_map(loc, transport_from_origin(loc, _at_least_float32(u) / 2, c), c).to(u.dtype)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A reparameterised sample (N, d)."""
        return self.sample_stack(1, generator)[0]

    def sample_stack(self, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """k reparameterised samples per location, (k, N, d)."""
        noise = randn_tensor((k, *self.loc.shape), generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.push(self.scale * noise)

    def tangent_coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """u(z) = λ_μ log_μ(z), the inverse of `push` (the transport back to 0 rescales by λ_μ/λ_0, then ×λ_0)."""
        loc = _at_least_float32(self.loc)
        return conformal_factor(loc, self.curvature) * log_map(loc, _at_least_float32(z), self.curvature)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log WN(z; μ, σ²) w.r.t. the Riemannian volume, (...,) for z (..., N, d)."""
        u, scale = self.tangent_coordinates(z), _at_least_float32(self.scale)
        log_normal = (-0.5 * (u / scale).pow(2) - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        r = u.norm(dim=-1)
        return (log_normal - (self.dim - 1) * _log_sinhc(math.sqrt(self.curvature) * r)).to(z.dtype)

    def kl(self) -> torch.Tensor:
        raise ValueError("A wrapped normal has no closed-form KL; expected the Monte Carlo estimate "
                         "log q(z|x) − log p(z) at a sample.")


class WrappedNormalPrior:
    """p(z) = WN(0, σ_p² I) on the ball: the p(z) component (latent_priors.py's interface) of the Poincaré VAE."""

    def __init__(self, dim: int, scale: float, curvature: float):
        self.dim, self.scale, self.curvature = dim, scale, curvature

    def _distribution(self, like: torch.Tensor) -> WrappedNormal:
        origin = like.new_zeros(self.dim)
        return WrappedNormal(origin, torch.full_like(origin, self.scale), self.curvature)

    def kl(self, posterior: WrappedNormal, latents: torch.Tensor) -> torch.Tensor:
        """The one-sample estimate log q(z|x) − log p(z) at the drawn latents (no closed form)."""
        return posterior.log_prob(latents) - self.log_prob(latents)

    def sample(self, num_samples: int, generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
        prior = self._distribution(torch.empty((), device=device, dtype=dtype))
        return prior.sample_stack(num_samples, generator)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        return self._distribution(latents).log_prob(latents)
