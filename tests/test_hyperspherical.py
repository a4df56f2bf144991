"""The von Mises–Fisher distribution (hf_vae/hyperspherical.py): Bessel functions against scipy, the KL against
numeric integration, and the sampler against the distribution's moments."""

import math

import pytest
import torch

from hf_vae.hyperspherical import VonMisesFisher, log_bessel_iv, log_sphere_area

scipy_special = pytest.importorskip("scipy.special")
scipy_integrate = pytest.importorskip("scipy.integrate")


@pytest.mark.parametrize("order", [0.0, 0.5, 1.0, 4.5, 31.0])
def test_log_bessel_matches_scipy_on_both_branches(order):
    x = torch.tensor([1e-3, 0.3, 2.0, 17.0, 99.9, 100.1, 640.0, 5e4], dtype=torch.float64)
    expected = torch.tensor([math.log(scipy_special.ive(order, v)) + v for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(log_bessel_iv(order, x), expected, rtol=1e-7, atol=1e-9)


def _kl_by_quadrature(dim: int, kappa: float) -> float:
    """KL(vMF || uniform) from the densities of s = 1 − μᵀz on [0, 2], each normalised numerically: under both,
    s has density ∝ (s(2 − s))^{(m−3)/2}, times exp(−κs) under the vMF."""
    base = lambda s: (s * (2 - s)) ** ((dim - 3) / 2)
    quad = lambda f: scipy_integrate.quad(f, 0, 2, points=[(dim - 1) / (2 * kappa)], epsabs=0, epsrel=1e-12,
                                          limit=500)[0]
    vmf_mass, uniform_mass = quad(lambda s: math.exp(-kappa * s) * base(s)), quad(base)
    return quad(lambda s: math.exp(-kappa * s) * base(s) / vmf_mass
                * (-kappa * s - math.log(vmf_mass) + math.log(uniform_mass)))


@pytest.mark.parametrize("dim", [3, 5, 16])
@pytest.mark.parametrize("kappa", [0.5, 5.0, 80.0])
def test_kl_to_uniform_matches_numeric_integration(dim, kappa):
    loc = torch.nn.functional.normalize(torch.randn(1, dim, dtype=torch.float64), dim=-1)
    vmf = VonMisesFisher(loc, torch.tensor([kappa], dtype=torch.float64))
    assert vmf.kl_to_uniform().item() == pytest.approx(_kl_by_quadrature(dim, kappa), rel=1e-6, abs=1e-8)


def test_density_integrates_to_one_on_the_circle():
    loc = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    vmf = VonMisesFisher(loc, torch.tensor([3.0], dtype=torch.float64))
    angles = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)[:-1]
    points = torch.stack([angles.cos(), angles.sin()], -1)
    mass = vmf.log_prob(points).exp().mean() * 2 * math.pi
    assert mass.item() == pytest.approx(1.0, rel=1e-9)
    assert log_sphere_area(2) == pytest.approx(math.log(2 * math.pi))


@pytest.mark.parametrize("dim,kappa", [(3, 2.0), (10, 25.0), (64, 300.0)])
def test_samples_lie_on_the_sphere_with_the_right_mean(dim, kappa):
    generator = torch.Generator().manual_seed(0)
    loc = torch.nn.functional.normalize(torch.randn(1, dim, generator=generator, dtype=torch.float64), dim=-1)
    n = 20000
    vmf = VonMisesFisher(loc.expand(n, dim), torch.full((n,), kappa, dtype=torch.float64))
    z = vmf.sample(generator)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(n, dtype=torch.float64))
    cosine = z @ loc[0]
    expected = vmf.mean_resultant_length()[0].item()
    # E[μᵀz] = A_m(κ); the sample mean's standard error is at most 1/sqrt(n)
    assert cosine.mean().item() == pytest.approx(expected, abs=4 / math.sqrt(n))
    orthogonal = z - cosine[:, None] * loc
    assert orthogonal.mean(0).norm().item() < 4 * math.sqrt(dim / n)  # the rest is symmetric about μ


def test_sampling_is_reproducible_and_differentiable():
    loc = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    kappa = torch.full((4,), 10.0, requires_grad=True)
    a = VonMisesFisher(loc, kappa).sample(torch.Generator().manual_seed(3))
    b = VonMisesFisher(loc, kappa).sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    (a @ torch.ones(6)).sum().backward()
    assert kappa.grad is not None and torch.isfinite(kappa.grad).all()


def test_a_circle_is_the_smallest_sphere():
    with pytest.raises(ValueError, match="Expected directions on a sphere of dimension >= 2"):
        VonMisesFisher(torch.ones(1, 1), torch.ones(1))
