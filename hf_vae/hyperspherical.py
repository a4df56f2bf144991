"""The von Mises–Fisher distribution on the unit sphere S^{m−1}, the posterior of the hyperspherical VAE
(Davidson et al. 2018, "Hyperspherical Variational Auto-Encoders"), whose prior is the uniform distribution on the
sphere.

    vMF(z; μ, κ) = C_m(κ) exp(κ μᵀz),   C_m(κ) = κ^{m/2−1} / ((2π)^{m/2} I_{m/2−1}(κ))

Sampling follows Wood (1994): the component w = μᵀz by rejection from a Beta proposal, a uniform direction
orthogonal to μ, and a Householder reflection from e₁ to μ (Davidson et al., algorithm 1). The proposal's draw ε
does not depend on κ, so z = h(ε, κ) carries the reparameterised gradient of the accepted draws (their g_rep).
Every draw comes from the given generator: Beta((m−1)/2, (m−1)/2) is the ratio of two χ²(m−1) sums of squared
normals, which needs nothing but `torch.randn`.

Both densities here, the vMF's and the uniform prior's 1/|S^{m−1}|, are with respect to the sphere's surface
measure, so their ratio is the importance weight of log p(x) (importance_sampling.py).
"""

import math
from typing import Optional

import torch

#: below this argument, log I_v(x) is summed from its power series; above, the uniform asymptotic expansion is
#: accurate to ~1e-7 relative (both branches are tested against scipy)
_SERIES_LIMIT = 100.0
#: rejection rounds of Wood's sampler before giving up (each round accepts with probability > 1/2 for every κ)
MAX_REJECTION_ROUNDS = 200


def log_bessel_iv(order: float, x: torch.Tensor) -> torch.Tensor:
    """log I_order(x) for x > 0, differentiable in x."""
    x = torch.as_tensor(x)
    small = x < _SERIES_LIMIT
    series = _log_bessel_series(order, torch.where(small, x, torch.ones_like(x)))
    asymptotic = _log_bessel_uniform_asymptotic(order, torch.where(small, torch.full_like(x, _SERIES_LIMIT), x))
    return torch.where(small, series, asymptotic)


def _log_bessel_series(order: float, x: torch.Tensor) -> torch.Tensor:
    """log Σ_k (x/2)^{2k+v} / (k! Γ(k+v+1)), enough terms that the largest left out is e^{-40} of the sum."""
    num_terms = int(_SERIES_LIMIT / 2 + 12 * math.sqrt(_SERIES_LIMIT) + 40)
    k = torch.arange(num_terms, dtype=x.dtype, device=x.device)
    terms = ((2 * k + order) * torch.log(x[..., None] / 2) - torch.lgamma(k + 1) - torch.lgamma(k + order + 1))
    return torch.logsumexp(terms, -1)


def _log_bessel_uniform_asymptotic(order: float, x: torch.Tensor) -> torch.Tensor:
    """Debye's expansion (Abramowitz & Stegun 9.7.7) with its first two corrections u_k(t)/v^k, written over
    √(v² + x²) so that it holds at v = 0 too (where it is Hankel's 1 + 1/(8x) + 9/(128x²))."""
    root = torch.sqrt(order ** 2 + x ** 2)
    t = order / root
    eta = root + order * torch.log(x / (order + root))
    u1 = (3 - 5 * t ** 2) / (24 * root)
    u2 = (81 - 462 * t ** 2 + 385 * t ** 4) / (1152 * root ** 2)
    return -0.5 * math.log(2 * math.pi) - 0.5 * torch.log(root) + eta + torch.log1p(u1 + u2)


def log_sphere_area(dim: int) -> float:
    """log of the surface area of S^{dim−1}, 2π^{dim/2} / Γ(dim/2)."""
    return math.log(2) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2)


def _draw(draw, shape, generator: Optional[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """`draw` (torch.randn or torch.rand) of `shape` on the generator's device, moved to `like`'s: a CPU generator
    seeds the same draws whatever device the model is on (as distributions.randn_tensor)."""
    device = generator.device if generator is not None else like.device
    return draw(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _log_bessel_at_least_float32(order: float, x: torch.Tensor) -> torch.Tensor:
    """`log_bessel_iv` computed in float32 or wider (its series sums hundreds of terms, beyond a half-precision
    mantissa), returned in x's dtype."""
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return log_bessel_iv(order, wide).to(x.dtype)


class VonMisesFisher:
    """vMF(μ, κ) with mean direction `loc` (N, m), unit norm, and concentration `concentration` (N,) or (N, 1).

    As a posterior of the skeleton (modeling_base.py) it answers `sample`, `sample_stack`, `mode`, `log_prob` and
    `kl` (to the uniform prior), and its `mean` is the mean direction μ."""

    deterministic = False

    def __init__(self, loc: torch.Tensor, concentration: torch.Tensor):
        self.loc = loc
        self.concentration = concentration.reshape(loc.shape[:-1])
        self.dim = loc.shape[-1]
        if self.dim < 2:
            raise ValueError(f"Expected directions on a sphere of dimension >= 2 (loc.shape[-1] >= 2), got {self.dim}.")

    @property
    def mean(self) -> torch.Tensor:
        """The mean direction μ (E[z] itself is A_m(κ)·μ, inside the ball)."""
        return self.loc

    def log_normaliser(self) -> torch.Tensor:
        """log C_m(κ)."""
        m, kappa = self.dim, self.concentration
        return ((m / 2 - 1) * torch.log(kappa) - m / 2 * math.log(2 * math.pi)
                - _log_bessel_at_least_float32(m / 2 - 1, kappa))

    def mean_resultant_length(self) -> torch.Tensor:
        """E[μᵀz] = I_{m/2}(κ) / I_{m/2−1}(κ)."""
        m, kappa = self.dim, self.concentration
        return torch.exp(_log_bessel_at_least_float32(m / 2, kappa) - _log_bessel_at_least_float32(m / 2 - 1, kappa))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log vMF(z; μ, κ) w.r.t. the surface measure, (...,) for z (..., N, m) (leading sample dims allowed)."""
        return self.log_normaliser() + self.concentration * (self.loc * z).sum(-1)

    def kl(self) -> torch.Tensor:
        """KL(q || U(S^{m−1})) per example (the skeleton's closed-form KL)."""
        return self.kl_to_uniform()

    def entropy(self) -> torch.Tensor:
        return -self.log_normaliser() - self.concentration * self.mean_resultant_length()

    def kl_to_uniform(self) -> torch.Tensor:
        """KL(vMF(μ, κ) || U(S^{m−1})) = κ·E[μᵀz] + log C_m(κ) + log|S^{m−1}| (Davidson et al., eq. 9)."""
        return -self.entropy() + log_sphere_area(self.dim)

    def mode(self) -> torch.Tensor:
        return self.loc

    def sample_stack(self, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """k reparameterised samples per direction, (k, N, m)."""
        loc = self.loc.expand(k, *self.loc.shape)
        return VonMisesFisher(loc, self.concentration.expand(loc.shape[:-1])).sample(generator)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        w = self._sample_w(generator)
        direction = _draw(torch.randn, self.loc.shape[:-1] + (self.dim - 1,), generator, self.loc)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        z = torch.cat([w[..., None], torch.sqrt((1 - w ** 2).clamp(min=0))[..., None] * direction], -1)
        return self._householder(z)

    def _householder(self, z: torch.Tensor) -> torch.Tensor:
        """Reflect e₁ onto μ: U = I − 2uuᵀ, u = (e₁ − μ)/‖e₁ − μ‖."""
        e1 = torch.zeros_like(self.loc)
        e1[..., 0] = 1
        u = e1 - self.loc
        u = u / u.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return z - 2 * (z * u).sum(-1, keepdim=True) * u

    def _sample_w(self, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Wood (1994)'s rejection sampler of w = μᵀz, all examples at once, reparameterised through κ."""
        m1 = self.dim - 1
        kappa = self.concentration
        b = m1 / (torch.sqrt(4 * kappa ** 2 + m1 ** 2) + 2 * kappa)
        x0 = (1 - b) / (1 + b)
        c = kappa * x0 + m1 * torch.log(1 - x0 ** 2)
        w = torch.zeros_like(kappa)
        pending = torch.ones_like(kappa, dtype=torch.bool)
        for _ in range(MAX_REJECTION_ROUNDS):
            chi_a = _draw(torch.randn, kappa.shape + (m1,), generator, kappa).pow(2).sum(-1)
            chi_b = _draw(torch.randn, kappa.shape + (m1,), generator, kappa).pow(2).sum(-1)
            eps = chi_a / (chi_a + chi_b)  # Beta((m−1)/2, (m−1)/2)
            u = _draw(torch.rand, kappa.shape, generator, kappa)
            candidate = (1 - (1 + b) * eps) / (1 - (1 - b) * eps)
            accept = kappa * candidate + m1 * torch.log(1 - x0 * candidate) - c >= torch.log(u)
            take = pending & accept
            w = torch.where(take, candidate, w)
            pending = pending & ~accept
            if not pending.any():
                return w
        raise RuntimeError(f"Wood's vMF sampler rejected {MAX_REJECTION_ROUNDS} proposals in a row for "
                           f"{int(pending.sum())} example(s); expected acceptance > 1/2 each round (concentration "
                           f"{kappa[pending][:3].tolist()}).")


class UniformSpherePrior:
    """p(z) = U(S^{m−1}) = 1/|S^{m−1}| w.r.t. the surface measure: the p(z) component (latent_priors.py's interface)
    of the hyperspherical VAE."""

    def __init__(self, dim: int):
        self.dim = dim

    def kl(self, posterior: VonMisesFisher, latents: torch.Tensor) -> torch.Tensor:
        """KL(vMF || U) per example, in closed form."""
        return posterior.kl_to_uniform()

    def sample(self, num_samples: int, generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
        """Normalised standard normal draws (their direction is uniform by rotational symmetry)."""
        z = _draw(torch.randn, (num_samples, self.dim), generator, torch.empty((), device=device, dtype=dtype))
        return z / z.norm(dim=-1, keepdim=True)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.full(latents.shape[:-1], -log_sphere_area(self.dim), dtype=latents.dtype, device=latents.device)
