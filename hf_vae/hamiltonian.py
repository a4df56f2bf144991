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
    a valid flow: the bound holds for every ε and every β₀ > 0), learned or fixed."""

    def __init__(self, num_steps: int, step_size: float, beta_zero: float, learn_step_size: bool,
                 learn_beta_zero: bool):
        super().__init__()
        self.num_steps, self.initial_step_size, self.initial_beta_zero = num_steps, step_size, beta_zero
        self.log_step_size = nn.Parameter(torch.tensor(math.log(step_size)), requires_grad=learn_step_size)
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
