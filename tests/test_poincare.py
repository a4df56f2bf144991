"""Distributions on the Poincaré ball (hf_vae/poincare.py), each formula against an independent computation: the
gyrovector identities, exp and log maps inverse of each other, the distance against its arcosh form, the wrapped
normal's density against a change of variables through the autograd Jacobian of its sampling map, its mass by
numeric integration over the disk, and E_q[p/q] = 1 between posterior and prior (the same base measure)."""

import math

import pytest
import torch

from hf_vae.configuration_base import ConfigFieldError
from hf_vae.configuration_poincare_vae import PoincareVAEConfig
from hf_vae.modeling_poincare_vae import PoincareVAEModel
from hf_vae.poincare import (WrappedNormal, WrappedNormalPrior, _log_sinhc, conformal_factor, distance, exp_map,
                             exp_map0, log_map, mobius_add, transport_from_origin)

CURVATURES = [0.5, 1.0, 2.0]


def points_in_ball(n, d, curvature, generator, max_radius=0.9):
    """n points of the ball of curvature −c, up to `max_radius` of its radius 1/√c."""
    direction = torch.nn.functional.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=-1)
    radius = max_radius * torch.rand(n, 1, generator=generator, dtype=torch.float64) / math.sqrt(curvature)
    return direction * radius


@pytest.mark.parametrize("c", CURVATURES)
def test_mobius_addition_has_identity_inverse_and_left_cancellation(c):
    g = torch.Generator().manual_seed(0)
    x, y = points_in_ball(50, 4, c, g), points_in_ball(50, 4, c, g)
    torch.testing.assert_close(mobius_add(x, torch.zeros_like(x), c), x)
    torch.testing.assert_close(mobius_add(-x, x, c), torch.zeros_like(x))
    torch.testing.assert_close(mobius_add(-x, mobius_add(x, y, c), c), y)  # Ganea et al. 2018, eq. 3


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_and_log_maps_are_inverse(c):
    g = torch.Generator().manual_seed(1)
    x, y = points_in_ball(50, 5, c, g), points_in_ball(50, 5, c, g)
    # tangent vectors of Riemannian norm λ_x‖v‖ ~ √5: geodesics that stay well inside the float64 margin
    v = torch.randn(50, 5, generator=g, dtype=torch.float64) / conformal_factor(x, c)
    torch.testing.assert_close(log_map(x, exp_map(x, v, c), c), v)
    torch.testing.assert_close(exp_map(x, log_map(x, y, c), c), y)
    torch.testing.assert_close(exp_map0(v, c), exp_map(torch.zeros_like(v), v, c))
    torch.testing.assert_close(log_map(torch.zeros_like(y), y, c),
                               torch.atanh(math.sqrt(c) * y.norm(dim=-1, keepdim=True)) * y
                               / (math.sqrt(c) * y.norm(dim=-1, keepdim=True)))


@pytest.mark.parametrize("c", CURVATURES)
def test_distance_is_the_arcosh_form_and_the_riemannian_norm_of_the_log(c):
    g = torch.Generator().manual_seed(2)
    x, y = points_in_ball(50, 3, c, g), points_in_ball(50, 3, c, g)
    # the closed form of the Poincaré distance, which goes through no Möbius addition
    ratio = 2 * c * (x - y).pow(2).sum(-1) / ((1 - c * x.pow(2).sum(-1)) * (1 - c * y.pow(2).sum(-1)))
    torch.testing.assert_close(distance(x, y, c), torch.acosh(1 + ratio) / math.sqrt(c))
    riemannian_norm = (conformal_factor(x, c) * log_map(x, y, c)).norm(dim=-1)
    torch.testing.assert_close(riemannian_norm, distance(x, y, c))


@pytest.mark.parametrize("c", CURVATURES)
def test_transport_from_the_origin_preserves_the_riemannian_norm(c):
    g = torch.Generator().manual_seed(3)
    x, v = points_in_ball(20, 3, c, g), torch.randn(20, 3, generator=g, dtype=torch.float64)
    moved = transport_from_origin(x, v, c)
    torch.testing.assert_close((conformal_factor(x, c) * moved).norm(dim=-1), 2 * v.norm(dim=-1))


def test_log_sinhc_matches_the_direct_formula_on_both_branches():
    x = torch.tensor([1e-6, 1e-3, 9e-3, 1.1e-2, 0.3, 2.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(_log_sinhc(x), torch.log(torch.sinh(x) / x), rtol=1e-12, atol=1e-15)
    assert torch.isfinite(_log_sinhc(torch.tensor([500.0]))).all()  # sinh overflows float32 there


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("d", [2, 5])
def test_density_is_the_change_of_variables_through_the_sampling_map(c, d):
    """The Lebesgue density of z = exp_μ(PT_{0→μ}(u/2)), u ~ N(0, σ²), is N(u) / |det ∂z/∂u| (autograd); the
    Riemannian one is that divided by the volume element λ_z^d."""
    g = torch.Generator().manual_seed(4)
    loc = points_in_ball(1, d, c, g, max_radius=0.8)[0]
    scale = 0.3 + torch.rand(d, generator=g, dtype=torch.float64)
    wn = WrappedNormal(loc, scale, c)
    sampling_map = lambda u: exp_map(loc, transport_from_origin(loc, u / 2, c), c)
    for u in scale * torch.randn(6, d, generator=g, dtype=torch.float64):
        z = sampling_map(u)
        jacobian = torch.autograd.functional.jacobian(sampling_map, u)
        log_normal = torch.distributions.Normal(0.0, scale).log_prob(u).sum()
        lebesgue = log_normal - torch.linalg.slogdet(jacobian).logabsdet
        riemannian = lebesgue - d * torch.log(conformal_factor(z, c)).squeeze()
        torch.testing.assert_close(wn.log_prob(z), riemannian)
        torch.testing.assert_close(wn.tangent_coordinates(z), u)


def test_density_integrates_to_one_over_the_disk():
    """A midpoint rule in polar coordinates, with the volume element λ_z² r dr dθ of the disk."""
    c = 1.0
    wn = WrappedNormal(torch.tensor([0.3, -0.4], dtype=torch.float64), torch.tensor([0.5, 0.9], dtype=torch.float64))
    n = 1500
    radius = (torch.arange(n, dtype=torch.float64) + 0.5) / n * (1 - 1e-9)
    angle = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * math.pi
    r, a = torch.meshgrid(radius, angle, indexing="ij")
    z = torch.stack([r * a.cos(), r * a.sin()], -1).reshape(-1, 2)
    volume = conformal_factor(z, c).squeeze(-1).pow(2) * r.reshape(-1)
    mass = (wn.log_prob(z).exp() * volume).sum() * (1 / n) * (2 * math.pi / n)
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_prior_over_posterior_averages_to_one_under_the_posterior(c):
    g = torch.Generator().manual_seed(5)
    loc = points_in_ball(3, 4, c, g, max_radius=0.5)
    # wider than the prior, so that p/q is bounded and its Monte Carlo average has a small error
    posterior = WrappedNormal(loc, torch.full((3, 4), 1.3, dtype=torch.float64), c)
    z = posterior.sample_stack(200000, g)
    ratio = (WrappedNormalPrior(4, 1.0, c).log_prob(z) - posterior.log_prob(z)).exp()
    torch.testing.assert_close(ratio.mean(0), torch.ones(3, dtype=torch.float64), atol=0.03, rtol=0)


@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0])
def test_samples_lie_in_the_ball_and_are_reproducible(scale):
    c = 2.0
    prior = WrappedNormalPrior(8, scale, c)
    z = prior.sample(5000, torch.Generator().manual_seed(6), "cpu", torch.float32)
    assert z.shape == (5000, 8)
    assert (z.norm(dim=-1) < 1 / math.sqrt(c)).all()
    assert torch.isfinite(prior.log_prob(z)).all()
    again = prior.sample(5000, torch.Generator().manual_seed(6), "cpu", torch.float32)
    assert torch.equal(z, again)
    # the geodesic distance from the origin is the norm of the tangent Gaussian draw: E[r²] = d σ²
    r = distance(torch.zeros_like(z), z, c).double()
    if scale < 4.0:  # float32 keeps distances up to about 12/√c (poincare._BOUNDARY_MARGIN)
        assert (r.pow(2).mean() / (8 * scale ** 2)).item() == pytest.approx(1.0, abs=0.05)


def test_posterior_is_differentiable_and_its_mode_is_its_location():
    params = torch.randn(3, 8, requires_grad=True)
    wn = WrappedNormal.from_parameters(params, 1.0)
    z = wn.sample(torch.Generator().manual_seed(0))
    (wn.log_prob(z).sum() + z.sum()).backward()
    assert torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0
    assert torch.equal(wn.mode(), wn.loc)
    # the mode has the highest density: nearby points have less
    nearby = wn.loc + 1e-2 * torch.randn(3, 4)
    assert (wn.log_prob(nearby) < wn.log_prob(wn.loc)).all()


def test_curvature_must_be_positive():
    with pytest.raises(ValueError, match="Expected a positive curvature"):
        WrappedNormal(torch.zeros(2), torch.ones(2), curvature=0.0)


# ---- the family (modeling_poincare_vae.py) -------------------------------------------------------------------


def tiny_model(**fields):
    torch.manual_seed(0)
    return PoincareVAEModel(PoincareVAEConfig(in_channels=1, image_size=4, latent_dim=3, hidden_dims=[8], **fields))


def test_log_likelihood_is_exact_when_the_decoder_ignores_z():
    """With p(x|z) constant in z the importance weights are p(z)/q(z), whose average is one when both are
    densities w.r.t. the same measure: the estimate must agree with the likelihood itself. (A prior narrower than
    the posterior keeps p/q bounded.)"""
    model = tiny_model(prior_scale=0.6, curvature=0.8).double().eval()
    with torch.no_grad():
        model.decoder.net[0].weight.zero_()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64).round()
    estimate = model.log_likelihood(x, num_samples=20000, chunk_size=5000, generator=torch.Generator().manual_seed(0))
    exact = -model.likelihood(x, model.decode(torch.zeros(2, 3, dtype=torch.float64)).parameters)
    torch.testing.assert_close(estimate, exact, atol=0.02, rtol=0)


def test_forward_draws_in_the_ball_and_estimates_the_kl_at_the_sample():
    c = 2.0
    model = tiny_model(curvature=c)
    x = torch.rand(3, 1, 4, 4)
    output = model.train()(x, generator=torch.Generator().manual_seed(1))
    assert (output.latents.norm(dim=-1) < 1 / math.sqrt(c)).all()
    posterior = model.encode(x).latent_dist
    expected = posterior.log_prob(output.latents) - model.prior_log_prob(output.latents)
    torch.testing.assert_close(output.kl, expected.mean())
    output.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert (model.sample_prior(100).norm(dim=-1) < 1 / math.sqrt(c)).all()
    torch.testing.assert_close(model.eval()(x).latents, posterior.loc)  # eval decodes the location μ


@pytest.mark.parametrize("fields,expected", [
    (dict(backbone="conv", block_out_channels=[8, 16], norm_num_groups=4),
     "Expected a vector latent for points on the ball"),
    (dict(curvature=0.0, hidden_dims=[8]), "Expected `curvature` to be a finite number > 0"),
    (dict(prior_scale=-1.0, hidden_dims=[8]), "Expected `prior_scale` to be a finite number > 0"),
])
def test_config_refuses_what_the_ball_cannot_take(fields, expected):
    with pytest.raises(ConfigFieldError, match=expected):
        PoincareVAEConfig(in_channels=1, image_size=8, **fields)


def _pythae_pvae_utils():
    """pythae 0.1.2's Poincaré-ball module (from Mathieu et al.'s code), loaded from its file so that pythae's
    package (and its torchvision import) stays unimported; None where it is not installed."""
    import importlib.util
    import pathlib

    path = pathlib.Path("/tmp/pythae_site/pythae/models/pvae/pvae_utils.py")
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("pythae_pvae_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wrapped_normal_density_matches_pythae():
    reference = _pythae_pvae_utils()
    if reference is None:
        pytest.skip("pythae 0.1.2 (at /tmp/pythae_site) is not installed")
    c, d = 0.7, 3
    g = torch.Generator().manual_seed(7)
    loc = points_in_ball(4, d, c, g, max_radius=0.7)
    scale = 0.2 + torch.rand(4, d, generator=g, dtype=torch.float64)
    ours = WrappedNormal(loc, scale, c)
    z = ours.sample_stack(5, g)  # (5, 4, d)
    ball = reference.PoincareBall(d, c)
    ball.device = loc.device  # read by `zero`
    theirs = reference.WrappedNormal(loc, scale, ball)
    torch.testing.assert_close(ours.log_prob(z), theirs.log_prob(z).squeeze(-1))
    torch.testing.assert_close(log_map(loc, z, c), ball.logmap(loc, z))


def test_model_card_describes_the_ball_and_the_density():
    from hf_vae.integrations.model_card import render_model_card

    card = render_model_card(tiny_model(curvature=0.5), repo_id="alice/poincare", metrics={"nll": 80.0})
    assert "PoincareVAEModel" in card.text and "## Training objective" in card.text
    assert "on the ball of curvature −0.5" in card.text and "log(sinh(√c‖u‖) / (√c‖u‖))" in card.text
