"""Tempered Hamiltonian dynamics on the latent, the flow of the Hamiltonian VAE (Caterini et al. 2018,
"Hamiltonian Variational Auto-Encoder").

From z₀ ~ q(z|x) and a momentum ρ₀ = γ/√β₀, γ ~ N(0, I), K steps of

    leapfrog on H(z, ρ) = U(z) + ½‖ρ‖²,  U(z) = −log p(x, z)      (volume-preserving: |det J| = 1)
    tempering ρ ← √(β_{k−1}/β_k)·ρ                                  (|det J| = (β_{k−1}/β_k)^{d/2})

with the quadratic schedule 1/√β_k = (1 − 1/√β₀)·k²/K² + 1/√β₀ (their eq. 23), so that β_K = 1. The whole flow
scales volume by β₀^{d/2}, which cancels against the momentum's initial density, and the ELBO is

    log p(x, z_K) + log N(ρ_K; 0, I) − log q(z₀|x) − log N(γ; 0, I)          (their eq. 21)
"""

import contextlib
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .distributions import DiagonalGaussianDistribution, randn_tensor, standard_normal_log_prob

Potential = Callable[[torch.Tensor], torch.Tensor]


def potential_gradient(potential: Potential, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """∇_z Σ_batch U(z): each example's U depends on its own z only, so the sum's gradient is per example. With
    `create_graph` the gradient is differentiable (training: the ELBO's gradient flows through the leapfrog);
    without, z is cut from its history, so an evaluation's memory is that of one decoder pass per step."""
    if not create_graph:
        z = z.detach().requires_grad_()
    elif not z.requires_grad:
        z = z.requires_grad_()
    (gradient,) = torch.autograd.grad(potential(z).sum(), z, create_graph=create_graph)
    return gradient


def leapfrog(z: torch.Tensor, rho: torch.Tensor, potential: Potential, step_size, create_graph: bool = True
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One leapfrog step: ρ ← ρ − ε/2·∇U(z); z ← z + ε·ρ; ρ ← ρ − ε/2·∇U(z)."""
    rho = rho - step_size / 2 * potential_gradient(potential, z, create_graph)
    z = z + step_size * rho
    if not create_graph:
        z = z.detach()
    rho = rho - step_size / 2 * potential_gradient(potential, z, create_graph)
    return z, rho


def tempering_schedule(beta_zero, num_steps: int) -> list:
    """√β_k for k = 0 … K (√β₀ first, 1 last), from the quadratic schedule of 1/√β_k."""
    inverse_root = 1 / (beta_zero.sqrt() if torch.is_tensor(beta_zero) else beta_zero ** 0.5)
    return [1 / ((1 - inverse_root) * (k / num_steps) ** 2 + inverse_root) for k in range(num_steps + 1)]


def tempered_hamiltonian_flow(z: torch.Tensor, gamma: torch.Tensor, potential: Potential, step_size, beta_zero,
                              num_steps: int, create_graph: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z₀, γ) -> (z_K, ρ_K) with ρ₀ = γ/√β₀."""
    roots = tempering_schedule(beta_zero, num_steps)
    rho = gamma / roots[0]
    for k in range(1, num_steps + 1):
        z, rho = leapfrog(z, rho, potential, step_size, create_graph)
        rho = roots[k - 1] / roots[k] * rho
    return z, rho


def momentum_log_prob(rho: torch.Tensor, event_dims: int) -> torch.Tensor:
    """log N(ρ; 0, I) over the last `event_dims` dimensions."""
    return standard_normal_log_prob(rho, event_dims)


@contextlib.contextmanager
def twice_differentiable(network: nn.Module, create_graph: bool):
    """While the leapfrog's gradient is itself differentiated (training), run `network` so that its backward has
    a backward: attention on PyTorch's math kernel (the fused flash and memory-efficient kernels have no double
    backward), and activation checkpointing off (its recomputation would run in the final backward, outside the
    math kernel, and recompute other tensors than those saved)."""
    if not create_graph:
        yield
        return
    checkpointed = [m for m in network.modules() if getattr(m, "gradient_checkpointing", False)]
    for module in checkpointed:
        module.gradient_checkpointing = False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for module in checkpointed:
            module.gradient_checkpointing = True


class TemperedLeapfrog(nn.Module):
    """The flow's parameters, the step size ε and the initial inverse temperature β₀, on a log scale (any value is
    a valid flow: the bound holds for every ε and every β₀ > 0), learned or fixed. ε is a scalar, or one step size
    per latent element when `step_size_shape` is the latent's shape (Caterini et al. 2018, sec. 4): each half-step
    ρ ← ρ − ε/2 ⊙ ∇U(z), z ← z + ε ⊙ ρ is still a shear, so the leapfrog still keeps volume."""

    def __init__(self, num_steps: int, step_size: float, beta_zero: float, learn_step_size: bool,
                 learn_beta_zero: bool, step_size_shape: Tuple[int, ...] = ()):
        super().__init__()
        self.num_steps, self.initial_step_size, self.initial_beta_zero = num_steps, step_size, beta_zero
        self.log_step_size = nn.Parameter(torch.full(tuple(step_size_shape), math.log(step_size)),
                                          requires_grad=learn_step_size)
        self.log_beta_zero = nn.Parameter(torch.tensor(math.log(beta_zero)), requires_grad=learn_beta_zero)

    def reset_parameters(self, init) -> None:
        """The configured values, through `init` (transformers' initialisers leave loaded weights alone)."""
        init.constant_(self.log_step_size, math.log(self.initial_step_size))
        init.constant_(self.log_beta_zero, math.log(self.initial_beta_zero))

    def forward(self, z: torch.Tensor, gamma: torch.Tensor, potential: Potential) -> Tuple[torch.Tensor, torch.Tensor]:
        """(z₀, γ) -> (z_K, ρ_K). The gradient of U is taken with autograd whatever the caller's grad mode
        (`generate` and `log_likelihood` run under no_grad); it is differentiable when the caller records a graph."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z_k, rho_k = tempered_hamiltonian_flow(z, gamma, potential, self.log_step_size.exp(),
                                                   self.log_beta_zero.exp(), self.num_steps, create_graph)
        return (z_k, rho_k) if create_graph else (z_k.detach(), rho_k.detach())


class HamiltonianPosterior:
    """q(z₀|x) with the end point z_K of a flow's draw and the effective log-density of z_K in the bound: the
    extended proposal's log-density at the flow's end point, from which the momentum's target density is taken
    out, so that with log p(x, z_K) it is the integrand of the ELBO over the extended space. For the HVAE
    (Caterini et al. 2018, eq. 21) it is

        log q(z₀|x) + log N(γ; 0, I) − log N(ρ_K; 0, I)

    (the map (z₀, γ) -> (z_K, ρ_K) keeps volume: tests/test_hamiltonian.py). Known at the posterior's own draw only.
    """

    deterministic = False

    def __init__(self, base: DiagonalGaussianDistribution, z_k: torch.Tensor, log_density: torch.Tensor):
        self.base, self.latents, self._log_density = base, z_k, log_density
        self.mean, self.logvar = base.mean, base.logvar

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        if latents is not self.latents:
            raise ValueError("Expected the end point of this posterior's own leapfrog flow (its density is known "
                             "there only), got other latents.")
        return self._log_density

    def mode(self) -> torch.Tensor:
        return self.base.mode()


def draw_momentum_noise(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """γ ~ N(0, I) of the shape of z₀."""
    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)


# -- the Riemannian flow (Chadebec et al. 2020, "Geometry-Aware Hamiltonian Variational Auto-Encoder") ----------
#
# H(z, ρ) = U(z) + ½ log det G(z) + ½ ρᵀ G⁻¹(z) ρ: the momentum is N(0, G(z)). Its generalised leapfrog (Girolami &
# Calderhead 2011, eqs. 16-18) is implicit; each implicit equation is solved by `iterations` fixed-point steps. It
# is symplectic, so volume-preserving, when they are solved exactly.

InverseMetric = Callable[[torch.Tensor], torch.Tensor]


def metric_kinetic_energy(inverse_metric: InverseMetric, z: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """½ log det G(z) + ½ ρᵀ G⁻¹(z) ρ per example (G⁻¹: (B, d, d))."""
    g_inv = inverse_metric(z)
    return -0.5 * torch.logdet(g_inv) + 0.5 * (rho.unsqueeze(-2) @ g_inv @ rho.unsqueeze(-1)).view(rho.shape[0])


def _gradient(function, wrt: torch.Tensor, others: Tuple[torch.Tensor, ...], create_graph: bool) -> torch.Tensor:
    """The partial ∇_wrt Σ_batch function(wrt, *others) at fixed `others` (which may themselves depend on `wrt`:
    the gradient is taken at a fresh node of `wrt`, so their paths are not followed), differentiable when
    `create_graph`."""
    if not create_graph:
        wrt, others = wrt.detach(), tuple(o.detach() for o in others)
    at = wrt.view_as(wrt) if wrt.requires_grad else wrt.detach().requires_grad_()
    (gradient,) = torch.autograd.grad(function(at, *others).sum(), at, create_graph=create_graph)
    return gradient


def generalized_leapfrog(z: torch.Tensor, rho: torch.Tensor, potential: Potential, inverse_metric: InverseMetric,
                         step_size, iterations: int, create_graph: bool = True
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of the generalised leapfrog on H = U + `metric_kinetic_energy`:

        ρ_½ = ρ − ε/2·∇_z H(z, ρ_½)                        (implicit in ρ_½)
        z'  = z + ε/2·[G⁻¹(z) + G⁻¹(z')]·ρ_½                (implicit in z')
        ρ'  = ρ_½ − ε/2·∇_z H(z', ρ_½)

    ∇U is taken once per point (the decoder's pass); the fixed-point iterations only re-evaluate the metric."""
    kinetic = lambda z_, rho_: metric_kinetic_energy(inverse_metric, z_, rho_)
    velocity = lambda z_, rho_: (inverse_metric(z_) @ rho_.unsqueeze(-1)).squeeze(-1)
    potential_grad = potential_gradient(potential, z, create_graph)
    rho_half = rho
    for _ in range(iterations):
        rho_half = rho - step_size / 2 * (potential_grad + _gradient(kinetic, z, (rho_half,), create_graph))
    start_velocity, z_new = velocity(z, rho_half), z
    for _ in range(iterations):
        z_new = z + step_size / 2 * (start_velocity + velocity(z_new, rho_half))
    if not create_graph:
        z_new, rho_half = z_new.detach(), rho_half.detach()
    potential_grad = potential_gradient(potential, z_new, create_graph)
    rho_new = rho_half - step_size / 2 * (potential_grad + _gradient(kinetic, z_new, (rho_half,), create_graph))
    return z_new, rho_new


def tempered_riemannian_flow(z: torch.Tensor, gamma: torch.Tensor, potential: Potential,
                             inverse_metric: InverseMetric, step_size, beta_zero, num_steps: int, iterations: int,
                             create_graph: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z₀, γ) -> (z_K, ρ_K, log det L(z₀)) with ρ₀ = L(z₀)·γ/√β₀, L the Cholesky factor of G(z₀): ρ₀ ~ N(0, G(z₀)/β₀).
    The tempering is the HVAE's, so the flow from (z₀, γ) scales volume by det L(z₀) alone."""
    roots = tempering_schedule(beta_zero, num_steps)
    cholesky = torch.linalg.cholesky(torch.linalg.inv(inverse_metric(z)))
    rho = (cholesky @ gamma.unsqueeze(-1)).squeeze(-1) / roots[0]
    log_det_cholesky = cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    for k in range(1, num_steps + 1):
        z, rho = generalized_leapfrog(z, rho, potential, inverse_metric, step_size, iterations, create_graph)
        rho = roots[k - 1] / roots[k] * rho
    return z, rho, log_det_cholesky


def metric_momentum_log_prob(rho: torch.Tensor, inverse_metric: torch.Tensor) -> torch.Tensor:
    """log N(ρ; 0, G) from G⁻¹ (B, d, d)."""
    quadratic = (rho.unsqueeze(-2) @ inverse_metric @ rho.unsqueeze(-1)).view(rho.shape[0])
    return 0.5 * (torch.logdet(inverse_metric) - quadratic - rho.shape[-1] * math.log(2 * math.pi))


class TemperedRiemannianLeapfrog(TemperedLeapfrog):
    """The Riemannian flow's parameters (the HVAE's ε and β₀) and its fixed-point iterations."""

    def __init__(self, num_steps: int, step_size: float, beta_zero: float, learn_step_size: bool,
                 learn_beta_zero: bool, iterations: int):
        super().__init__(num_steps, step_size, beta_zero, learn_step_size, learn_beta_zero)
        self.iterations = iterations

    def forward(self, z: torch.Tensor, gamma: torch.Tensor, potential: Potential, inverse_metric: InverseMetric
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z₀, γ) -> (z_K, ρ_K, log det L(z₀)), differentiable when the caller records a graph."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            out = tempered_riemannian_flow(z, gamma, potential, inverse_metric, self.log_step_size.exp(),
                                           self.log_beta_zero.exp(), self.num_steps, self.iterations, create_graph)
        return out if create_graph else tuple(t.detach() for t in out)
