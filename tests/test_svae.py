"""The hyperspherical VAE (modeling_svae.py): its posterior and prior are densities w.r.t. the same surface measure
(so the importance-sampled log p(x) is honest), the vMF density integrates to one on S², latents lie on the sphere,
and the config refuses latents that are not vectors on a sphere."""

import math

import pytest
import torch

from hf_vae.configuration_base import ConfigFieldError
from hf_vae.configuration_svae import SVAEConfig
from hf_vae.hyperspherical import UniformSpherePrior, VonMisesFisher
from hf_vae.modeling_svae import SVAEModel


def tiny_model(latent_dim=3):
    torch.manual_seed(0)
    return SVAEModel(SVAEConfig(in_channels=1, image_size=4, latent_dim=latent_dim, hidden_dims=[8]))


def test_vmf_density_integrates_to_one_on_the_two_sphere():
    """A midpoint rule over the polar and azimuthal angles, the area element sin θ dθ dφ."""
    loc = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8]], dtype=torch.float64), dim=-1)
    vmf = VonMisesFisher(loc, torch.tensor([7.0], dtype=torch.float64))
    n = 800
    theta = (torch.arange(n, dtype=torch.float64) + 0.5) * math.pi / n
    phi = (torch.arange(2 * n, dtype=torch.float64) + 0.5) * math.pi / n
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    points = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1)
    mass = (vmf.log_prob(points.reshape(-1, 1, 3)).exp().reshape(n, 2 * n) * t.sin()).sum() * (math.pi / n) ** 2
    assert mass.item() == pytest.approx(1.0, rel=1e-5)


def test_prior_over_posterior_averages_to_one_under_the_posterior():
    """E_q[p(z)/q(z)] = 1 exactly when p and q are densities w.r.t. the same measure: the importance weight of
    log p(x) then estimates the right quantity."""
    generator = torch.Generator().manual_seed(0)
    loc = torch.nn.functional.normalize(torch.randn(3, 5, generator=generator, dtype=torch.float64), dim=-1)
    vmf = VonMisesFisher(loc, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))  # p/q bounded on the sphere
    z = vmf.sample_stack(200000, generator)
    assert z.shape == (200000, 3, 5)
    ratio = (UniformSpherePrior(5).log_prob(z) - vmf.log_prob(z)).exp()
    torch.testing.assert_close(ratio.mean(0), torch.ones(3, dtype=torch.float64), atol=0.02, rtol=0)


def test_uniform_prior_draws_have_the_moments_of_the_uniform_distribution():
    z = UniformSpherePrior(4).sample(100000, torch.Generator().manual_seed(0), "cpu", torch.float64)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(100000, dtype=torch.float64))
    assert z.mean(0).abs().max() < 0.01
    torch.testing.assert_close(z.T @ z / len(z), torch.eye(4, dtype=torch.float64) / 4, atol=0.01, rtol=0)


def test_log_likelihood_is_exact_when_the_decoder_ignores_z():
    """With p(x|z) constant in z, log p(x) = log p(x|z) and the importance weights are p(z)/q(z): their average is
    one, so the estimate must agree with the likelihood itself."""
    model = tiny_model().double().eval()
    first = model.decoder.net[0] if hasattr(model.decoder, "net") else None
    assert isinstance(first, torch.nn.Linear), "the tiny MLP decoder starts with a dense layer"
    with torch.no_grad():
        first.weight.zero_()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64).round()
    generator = torch.Generator().manual_seed(0)
    estimate = model.log_likelihood(x, num_samples=20000, chunk_size=5000, generator=generator)
    exact = -model.likelihood(x, model.decode(torch.nn.functional.normalize(torch.ones(2, 3, dtype=torch.float64),
                                                                              dim=-1)).parameters)
    torch.testing.assert_close(estimate, exact, atol=0.02, rtol=0)


def test_forward_draws_on_the_sphere_and_reports_the_closed_form_kl():
    model = tiny_model(latent_dim=6)
    x = torch.rand(3, 1, 4, 4)
    output = model.train()(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(output.latents.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(output.posterior_mean.norm(dim=-1), torch.ones(3))
    assert (output.posterior_concentration > 1).all()
    posterior = model.encode(x).latent_dist
    torch.testing.assert_close(output.kl, posterior.kl_to_uniform().mean())
    output.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(model.sample_prior(5).norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(model.eval()(x).latents, posterior.loc)  # eval decodes the mean direction


@pytest.mark.parametrize("fields,expected", [
    (dict(backbone="conv", block_out_channels=[8, 16], norm_num_groups=4),
     "Expected a vector latent for points on the sphere"),
    (dict(latent_dim=1, hidden_dims=[8]), "Expected latent_dim >= 2"),
])
def test_config_refuses_latents_off_a_sphere(fields, expected):
    with pytest.raises(ConfigFieldError, match=expected):
        SVAEConfig(in_channels=1, image_size=8, **fields)


def test_model_card_describes_the_sphere_and_the_kl():
    from hf_vae.integrations.model_card import render_model_card

    card = render_model_card(tiny_model(latent_dim=5), repo_id="alice/svae", metrics={"nll": 80.0})
    assert "SVAEModel" in card.text and "## Training objective" in card.text
    assert "vMF(μ(x), κ(x)) on S^4" in card.text and "KL(vMF(μ, κ) ‖ U(S^{m−1}))" in card.text
