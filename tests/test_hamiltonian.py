"""The Hamiltonian VAE's flow (hf_vae/hamiltonian.py): leapfrog preserves volume, tempering scales it by
β₀^{d/2}, and the schedule ends at β_K = 1."""

import math

import torch

from hf_vae.hamiltonian import (generalized_leapfrog, leapfrog, metric_kinetic_energy, metric_momentum_log_prob,
                                tempered_hamiltonian_flow, tempered_riemannian_flow, tempering_schedule)

D = 3
WEIGHT = torch.tensor([[1.0, 0.3, -0.2], [0.3, 2.0, 0.5], [-0.2, 0.5, 1.5]], dtype=torch.float64)


def potential(z):
    """A non-quadratic U, so that the leapfrog's Jacobian is not constant."""
    return 0.5 * ((z @ WEIGHT) * z).sum(-1) + torch.sin(z).sum(-1) + 0.1 * z.pow(4).sum(-1)


def _jacobian_log_det(step, state):
    jacobian = torch.autograd.functional.jacobian(step, state)
    return torch.linalg.slogdet(jacobian).logabsdet.item()


def test_leapfrog_preserves_volume():
    state = torch.tensor([0.4, -1.2, 0.7, 0.3, 0.9, -0.5], dtype=torch.float64)

    def step(s):
        z, rho = leapfrog(s[:D][None], s[D:][None], potential, 0.3)
        return torch.cat([z[0], rho[0]])

    assert abs(_jacobian_log_det(step, state)) < 1e-10


def test_leapfrog_with_one_step_size_per_dimension_preserves_volume():
    # Caterini et al.'s ε ∈ R^d: ρ ← ρ − ε/2 ⊙ ∇U(z) and z ← z + ε ⊙ ρ are still shears
    state = torch.tensor([0.4, -1.2, 0.7, 0.3, 0.9, -0.5], dtype=torch.float64)
    step_size = torch.tensor([0.05, 0.3, 0.45], dtype=torch.float64)

    def step(s):
        z, rho = leapfrog(s[:D][None], s[D:][None], potential, step_size)
        return torch.cat([z[0], rho[0]])

    assert abs(_jacobian_log_det(step, state)) < 1e-10


def test_tempered_flow_from_z_and_gamma_preserves_volume():
    beta_zero = 0.3
    state = torch.tensor([0.4, -1.2, 0.7, 0.3, 0.9, -0.5], dtype=torch.float64)

    def flow(s):
        z, rho = tempered_hamiltonian_flow(s[:D][None], s[D:][None], potential, 0.2, beta_zero, num_steps=4)
        return torch.cat([z[0], rho[0]])

    # γ -> ρ₀ = γ/√β₀ scales by β₀^{-d/2}; tempering by √(β₀/β_K) per dimension = β₀^{d/2}: the map (z₀, γ) ->
    # (z_K, ρ_K) keeps volume, which is why eq. 21 needs no Jacobian term
    assert abs(_jacobian_log_det(flow, state)) < 1e-9


def test_schedule_runs_from_beta_zero_to_one():
    roots = tempering_schedule(torch.tensor(0.25, dtype=torch.float64), 5)
    assert math.isclose(float(roots[0]), 0.5) and math.isclose(float(roots[-1]), 1.0)
    assert all(a < b for a, b in zip(roots, roots[1:]))


def test_energy_is_nearly_conserved_without_tempering():
    z, rho = torch.tensor([[0.4, -1.2, 0.7]], dtype=torch.float64), torch.tensor([[0.3, 0.9, -0.5]], dtype=torch.float64)
    energy = lambda z, rho: potential(z) + 0.5 * rho.pow(2).sum(-1)
    start = energy(z, rho)
    for _ in range(50):
        z, rho = leapfrog(z, rho, potential, 0.01, create_graph=False)
        z = z.detach()
    assert abs((energy(z, rho) - start).item()) < 1e-3  # the leapfrog's error is O(ε²)


def _tempered_step(roots, k):
    """Leapfrog step k of the tempered flow followed by its cooling ρ ← √(β_{k−1}/β_k)·ρ, on the state (z, ρ)."""

    def step(s):
        z, rho = leapfrog(s[:D][None], s[D:][None], potential, 0.25)
        return torch.cat([z[0], roots[k - 1] / roots[k] * rho[0]])

    return step


def test_one_tempered_step_scales_volume_by_its_tempering_factor():
    beta_zero, num_steps = 0.3, 4
    roots = [float(r) for r in tempering_schedule(beta_zero, num_steps)]
    state = torch.tensor([0.4, -1.2, 0.7, 0.3, 0.9, -0.5], dtype=torch.float64)
    for k in range(1, num_steps + 1):
        # |det J| = (√β_{k−1}/√β_k)^d: log of it is d·log(√β_{k−1}/√β_k)
        expected = D * math.log(roots[k - 1] / roots[k])
        assert math.isclose(_jacobian_log_det(_tempered_step(roots, k), state), expected, abs_tol=1e-10)


def test_untempered_step_keeps_volume():
    roots = [float(r) for r in tempering_schedule(1.0, 3)]  # β₀ = 1: every β_k = 1
    assert roots == [1.0] * 4
    state = torch.tensor([1.4, 0.2, -0.7, -0.3, 0.1, 0.5], dtype=torch.float64)
    assert abs(_jacobian_log_det(_tempered_step(roots, 2), state)) < 1e-10


def test_gradient_without_a_graph_is_the_same_and_detached():
    z = torch.tensor([[0.4, -1.2, 0.7]], dtype=torch.float64, requires_grad=True)
    rho = torch.tensor([[0.3, 0.9, -0.5]], dtype=torch.float64)
    with_graph = leapfrog(z, rho, potential, 0.1, create_graph=True)
    without = leapfrog(z, rho, potential, 0.1, create_graph=False)
    for a, b in zip(with_graph, without):
        torch.testing.assert_close(b, a.detach())
        assert not b.requires_grad


# ---- the generalised leapfrog of the RHVAE -------------------------------------------------------------------

CENTROIDS = torch.tensor([[0.3, -0.2, 0.5], [-0.6, 0.4, 0.1]], dtype=torch.float64)
FACTORS = torch.tensor([[[1.0, 0.0, 0.0], [0.3, 0.8, 0.0], [-0.2, 0.1, 1.2]],
                        [[0.7, 0.0, 0.0], [0.0, 1.1, 0.0], [0.4, -0.3, 0.9]]], dtype=torch.float64)


def inverse_metric(z):
    """A position-dependent G⁻¹ of the RHVAE's form: Σ_i L_i L_iᵀ exp(−‖z − c_i‖²/T²) + λI."""
    weights = torch.exp(-(z.unsqueeze(1) - CENTROIDS).pow(2).sum(-1) / 1.5 ** 2)
    matrices = FACTORS @ FACTORS.transpose(-1, -2)
    return torch.einsum("bn,nij->bij", weights, matrices) + 0.1 * torch.eye(D, dtype=torch.float64)


def test_generalized_leapfrog_preserves_volume_when_its_equations_are_solved():
    state = torch.tensor([0.4, -1.2, 0.7, 0.3, 0.9, -0.5], dtype=torch.float64)

    def step(s):  # 25 fixed-point iterations: the implicit equations solved to machine precision
        z, rho = generalized_leapfrog(s[:D][None], s[D:][None], potential, inverse_metric, 0.1, 25)
        return torch.cat([z[0], rho[0]])

    assert abs(_jacobian_log_det(step, state)) < 1e-8


def test_riemannian_flow_from_z_and_gamma_scales_volume_by_det_l():
    beta_zero = 0.4
    state = torch.tensor([0.4, -1.2, 0.7, 0.3, 0.9, -0.5], dtype=torch.float64)

    def flow(s):
        z, rho, _ = tempered_riemannian_flow(s[:D][None], s[D:][None], potential, inverse_metric, 0.1, beta_zero,
                                             num_steps=3, iterations=25)
        return torch.cat([z[0], rho[0]])

    _, _, log_det_cholesky = tempered_riemannian_flow(state[:D][None], state[D:][None], potential, inverse_metric,
                                                      0.1, beta_zero, num_steps=3, iterations=25)
    # ρ₀ = L(z₀)γ/√β₀ scales by det L·β₀^{-d/2}, the tempering by β₀^{d/2}, the leapfrog by 1
    assert math.isclose(_jacobian_log_det(flow, state), log_det_cholesky.item(), abs_tol=1e-7)


def test_metric_kinetic_energy_is_minus_the_log_density_of_n_0_g_up_to_its_constant():
    z = torch.tensor([[0.2, 0.1, -0.4]], dtype=torch.float64)
    rho = torch.tensor([[0.5, -1.0, 0.3]], dtype=torch.float64)
    g = torch.linalg.inv(inverse_metric(z))
    density = torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), covariance_matrix=g[0])
    constant = 0.5 * D * math.log(2 * math.pi)
    kinetic = metric_kinetic_energy(inverse_metric, z, rho).item()
    assert math.isclose(kinetic, -density.log_prob(rho[0]).item() - constant, rel_tol=1e-12)
    assert math.isclose(metric_momentum_log_prob(rho, inverse_metric(z)).item(), density.log_prob(rho[0]).item(),
                        rel_tol=1e-12)
