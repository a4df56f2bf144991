"""The two-level latent of the Burgess backbone (`local_latent_channels`): z = (z_global, z_local) with
p(z) = N(z_global; 0, I) N(z_local; μ(z_global), σ²(z_global)). Each formula is checked against torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Normal

import hf_vae
from hf_vae.distributions import DiagonalGaussianDistribution

TWO_LEVEL = dict(in_channels=1, image_size=32, backbone="burgess", block_out_channels=[16, 16, 16],
                 hidden_dims=[64], latent_dim=6, local_latent_channels=2)
D, L = 6, 2 * 8 * 8  # global dims; local elements: 2 channels on the 8x8 grid of the last-but-one conv


def two_level_model(cls=hf_vae.VAEModel, config_cls=hf_vae.VAEConfig, seed=0, **extra):
    torch.manual_seed(seed)
    return cls(config_cls(**TWO_LEVEL, **extra)).eval()


def images(n=4, seed=1):
    return (torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) > 0.6).float()


def log_prior_reference(model, z):
    """log p(z) from torch.distributions, with the conditional prior's parameters read off the decoder."""
    z_global, z_local = z[..., :D], z[..., D:]
    mean, logvar = model.decoder.local_prior(z_global)
    return Normal(0.0, 1.0).log_prob(z_global).sum(-1) + Normal(mean, (0.5 * logvar).exp()).log_prob(z_local).sum(-1)


def test_latent_layout_and_a_local_code_acts_locally():
    model = two_level_model()
    assert model.latent_shape == (D + L,) and model.local_latent_size == L
    posterior = model.encode(images()).latent_dist
    assert posterior.mean.shape == (4, D + L)
    # The local latent is a grid: a change in its top-left cell moves the top-left of the image, not the
    # bottom-right (receptive field: a 3x3 conv at 8x8, then 4x4 stride-2 transposed convs to 32x32).
    z = posterior.mean.clone()
    base = model.decode(z).sample
    z[:, D + 0] += 5.0  # channel 0, cell (0, 0)
    moved = model.decode(z).sample
    delta = (moved - base).abs()
    assert delta[..., :8, :8].amax() > 1e-3
    assert delta[..., 16:, 16:].amax() == 0
    # z_global changes the whole picture, including the conditional prior of z_local.
    z_global = torch.randn(3, D)
    mean, logvar = model.decoder.local_prior(z_global)
    assert mean.shape == logvar.shape == (3, L)
    assert not torch.allclose(mean[0], mean[1])


def test_kl_matches_a_monte_carlo_estimate_of_log_q_minus_log_p():
    model = two_level_model()
    posterior = model.encode(images()).latent_dist
    n = 4000
    gen = torch.Generator().manual_seed(0)
    z = posterior.mean + posterior.std * torch.randn(n, *posterior.mean.shape, generator=gen)  # (n, B, D + L)
    with torch.no_grad():
        log_q = Normal(posterior.mean, posterior.std).log_prob(z).sum(-1)
        monte_carlo = log_q - log_prior_reference(model, z)  # (n, B)
        closed_form = model.kl_divergence(posterior, z)  # closed form in z_local, one sample of z_global each
    assert closed_form.shape == (n, 4)
    stderr = (monte_carlo.std(0) ** 2 / n + closed_form.std(0) ** 2 / n).sqrt()
    gap = (monte_carlo.mean(0) - closed_form.mean(0)).abs()
    assert torch.all(gap < 5 * stderr), (gap, stderr)
    assert torch.all(closed_form.mean(0) > 1.0)  # a real KL, not a trivially small one


def test_prior_log_prob_and_ancestral_samples():
    model = two_level_model()
    with torch.no_grad():
        z = model.sample_prior(20000, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(model.prior_log_prob(z), log_prior_reference(model, z), atol=1e-3, rtol=1e-5)
        z_global = z[:, :D]
        assert abs(z_global.mean().item()) < 0.02 and abs(z_global.var().item() - 1) < 0.02
        # z_local | z_global ~ N(μ(z_global), σ²(z_global)): the standardised residuals are standard normal.
        mean, logvar = model.decoder.local_prior(z_global)
        residual = (z[:, D:] - mean) / (0.5 * logvar).exp()
        assert residual.mean().abs() < 0.01 and abs(residual.var().item() - 1) < 0.01
        # and z_local is not a standard normal itself: the prior is conditional
        assert (z[:, D:].var(0) - 1).abs().mean() > 0.05 or (z[:, D:].mean(0)).abs().mean() > 0.05
        # The same generator gives the same samples; stacked latents (K, B, D) give (K, B) log-densities.
        again = model.sample_prior(20000, generator=torch.Generator().manual_seed(0))
        assert torch.equal(z, again)
        assert model.prior_log_prob(z[:12].view(3, 4, -1)).shape == (3, 4)
    assert model.generate(5, generator=torch.Generator().manual_seed(0)).shape == (5, 1, 32, 32)


def test_the_loss_is_the_negative_elbo_and_trains_the_conditional_prior():
    model = two_level_model().train()
    x = images()
    out = model(x, generator=torch.Generator().manual_seed(0))
    # −ELBO = −log p(x|z) + KL with the KL of the two-level prior at the decoded z
    expected = torch.nn.functional.binary_cross_entropy(
        out.reconstruction.clamp(1e-7, 1 - 1e-7), x, reduction="none").flatten(1).sum(1).mean()
    kl = model.kl_divergence(DiagonalGaussianDistribution(mean=out.posterior_mean, logvar=out.posterior_logvar), out.latents).mean()
    assert torch.allclose(out.reconstruction_loss, expected, rtol=1e-4)
    assert torch.allclose(out.loss, out.reconstruction_loss + kl) and torch.allclose(out.kl, kl)
    out.loss.backward()
    for name in ("decoder.local_prior_head.2.weight", "decoder.local_in.weight", "encoder.local_head.2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_importance_weighted_bound_is_above_the_elbo():
    model = two_level_model()
    x = images(6)
    with torch.no_grad():
        elbos = torch.stack([-model(x, generator=torch.Generator().manual_seed(s), return_dict=True).loss
                             for s in range(20)]).mean()
        log_px = model.log_likelihood(x, num_samples=500, generator=torch.Generator().manual_seed(0)).mean()
    assert log_px > elbos
    # The IWAE family takes the local latent too: its per-sample regulariser is log q − log p of the two-level prior.
    iwae = two_level_model(hf_vae.IWAEModel, hf_vae.IWAEConfig, num_importance_samples=5)
    out = iwae(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.latents.shape == (6, D + L)


def test_beta_vae_weights_the_two_level_kl():
    model = two_level_model(hf_vae.BetaVAEModel, hf_vae.BetaVAEConfig, beta=4.0)
    out = model(images(), generator=torch.Generator().manual_seed(0))
    kl = model.kl_divergence(DiagonalGaussianDistribution(mean=out.posterior_mean, logvar=out.posterior_logvar), out.latents)
    assert torch.allclose(out.regularisation_loss, 4.0 * kl.mean())


def test_save_and_load_keep_the_model(tmp_path):
    from transformers import AutoModel

    model = two_level_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, hf_vae.VAEModel) and loaded.config.local_latent_channels == 2
    x = images()
    assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(model.generate(4, generator=gen()), loaded.generate(4, generator=gen()))


@pytest.mark.parametrize("family", ["CVAE", "VampVAE", "BetaTCVAE", "FactorVAE", "InfoVAE"])
def test_families_without_a_two_level_prior_refuse_it(family):
    config_cls, model_cls = getattr(hf_vae, f"{family}Config"), getattr(hf_vae, f"{family}Model")
    extra = {"num_classes": 3} if family == "CVAE" else {}
    config = config_cls(**TWO_LEVEL, **extra)
    with pytest.raises(ValueError, match=rf"local_latent_channels=0 for {family}Model.*got 2"):
        model_cls(config)


@pytest.mark.parametrize("change, message", [
    ({"local_latent_channels": -1}, "an int >= 0, got -1"),
    ({"local_latent_channels": True}, "an int >= 0, got True"),
    ({"local_latent_channels": 1.5}, "an int >= 0, got 1.5"),
    ({"block_out_channels": [16]}, "at least two convolutions"),
    ({"backbone": "conv", "block_out_channels": [16, 32]}, "backbone='conv'"),
])
def test_bad_local_latent_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        hf_vae.VAEConfig(**{**TWO_LEVEL, **change})


def test_without_a_local_latent_nothing_changes():
    # The default is a single vector latent: same parameters and state-dict keys as before the option existed.
    config = dict(TWO_LEVEL, local_latent_channels=0)
    model = hf_vae.VAEModel(hf_vae.VAEConfig(**config))
    assert model.latent_shape == (D,) and model.local_latent_size == 0
    assert not any("local" in name for name in model.state_dict())
    posterior = model.encode(images()).latent_dist
    assert torch.equal(model.kl_divergence(posterior, posterior.mean), posterior.kl())
    assert math.isclose(model.prior_log_prob(torch.zeros(1, D)).item(), -0.5 * D * math.log(2 * math.pi), rel_tol=1e-6)


@pytest.mark.parametrize("family", ["VAE", "BetaVAE", "IWAE"])
def test_the_model_card_describes_the_two_level_prior(family):
    from hf_vae.integrations.model_card import render_model_card

    config_cls, model_cls = getattr(hf_vae, f"{family}Config"), getattr(hf_vae, f"{family}Model")
    card = render_model_card(model_cls(config_cls(**TWO_LEVEL)), repo_id="alice/two-level").text
    assert "2×8×8 local latent" in card and f"{D + L} numbers" in card
    assert "p(z_local | z_global)" in card
    plain = render_model_card(model_cls(config_cls(**dict(TWO_LEVEL, local_latent_channels=0))), repo_id="alice/one").text
    assert "local" not in plain and "N(0, I)" in plain
