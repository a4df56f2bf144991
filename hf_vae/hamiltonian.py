"""Tempered Hamiltonian dynamics on the latent, the flow of the Hamiltonian VAE (Caterini et al. 2018,
"Hamiltonian Variational Auto-Encoder").

From z₀ ~ q(z|x) and a momentum ρ₀ = γ/√β₀, γ ~ N(0, I), K steps of

    leapfrog on H(z, ρ) = U(z) + ½‖ρ‖²,  U(z) = −log p(x, z)      (volume-preserving: |det J| = 1)
    tempering ρ ← √(β_{k−1}/β_k)·ρ                                  (|det J| = (β_{k−1}/β_k)^{d/2})

with the quadratic schedule 1/√β_k = (1 − 1/√β₀)·k²/K² + 1/√β₀ (their eq. 23), so that β_K = 1. The whole flow
scales volume by β₀^{d/2}, which cancels against the momentum's initial density, and the ELBO is

    log p(x, z_K) + log N(ρ_K; 0, I) − log q(z₀|x) − log N(γ; 0, I)          (their eq. 21)
"""

from typing import Callable, Tuple

import torch

Potential = Callable[[torch.Tensor], torch.Tensor]


def potential_gradient(potential: Potential, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """∇_z Σ_batch U(z): each example's U depends on its own z only, so the sum's gradient is per example."""
    if not z.requires_grad:
        z = z.requires_grad_()
    (gradient,) = torch.autograd.grad(potential(z).sum(), z, create_graph=create_graph)
    return gradient


def leapfrog(z: torch.Tensor, rho: torch.Tensor, potential: Potential, step_size, create_graph: bool = True
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One leapfrog step: ρ ← ρ − ε/2·∇U(z); z ← z + ε·ρ; ρ ← ρ − ε/2·∇U(z)."""
    rho = rho - step_size / 2 * potential_gradient(potential, z, create_graph)
    z = z + step_size * rho
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
