"""The other VAE families: each formula against an independent computation, and each family end to end."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import hf_vae
from hf_vae import IWAEConfig, IWAEModel, MIWAEConfig, MIWAEModel, VAEConfig, VAEModel, VampVAEConfig, VampVAEModel

TINY = dict(in_channels=1, image_size=8, hidden_dims=[32], latent_dim=4)


def binary_images(batch=16, seed=0):
    return (torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def train_briefly(model, x, steps=40, lr=1e-2):
    """A few steps make the decoder depend on z, so that the bounds differ visibly."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        model(pixel_values=x).loss.backward()
        optimizer.step()
    return model.eval()


def log_weights_by_hand(model, x, eps):
    """log p(x|z) + log N(z; 0, I) − log q(z|x) for z = μ + σ·eps, eps (K, B, D), written out independently."""
    params = model.encoder(x)
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar)
    z = mean + std * eps
    logits = model.decoder(z.reshape(-1, z.shape[-1])).view(*z.shape[:2], *x.shape[1:])
    log_px_z = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(2).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(mean, std).log_prob(z).sum(-1)
    return log_px_z + log_pz - log_qz


# ---- IWAE / MIWAE -------------------------------------------------------------------------------------------


def test_iwae_with_one_sample_is_the_elbo_with_the_same_noise():
    torch.manual_seed(0)
    model = IWAEModel(IWAEConfig(num_importance_samples=1, **TINY))
    x = binary_images(6)
    out = model(pixel_values=x, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.loss, -log_weights_by_hand(model, x, eps).mean())
    # ... and on average over the noise it is the VAE's loss (closed-form KL), for the same weights.
    vae = VAEModel(VAEConfig(**TINY))
    vae.load_state_dict(model.state_dict())
    with torch.no_grad():
        iwae_losses = torch.stack([model(pixel_values=x).loss for _ in range(3000)])
        vae_losses = torch.stack([vae(pixel_values=x).loss for _ in range(3000)])
    standard_error = math.sqrt((iwae_losses.var() + vae_losses.var()) / 3000)
    assert abs(iwae_losses.mean() - vae_losses.mean()) < 4 * standard_error


def test_iwae_objective_is_the_log_mean_exp_of_the_importance_weights():
    torch.manual_seed(0)
    model = IWAEModel(IWAEConfig(num_importance_samples=7, **TINY))
    x = binary_images(5)
    out = model(pixel_values=x, generator=torch.Generator().manual_seed(11))
    eps = torch.randn(7, 5, 4, generator=torch.Generator().manual_seed(11))
    log_w = log_weights_by_hand(model, x, eps).double()
    expected = -(torch.log(torch.exp(log_w).mean(0))).mean()
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-4)
    # The same noise through log_likelihood (K = 7) gives the same bound per example.
    log_px = model.log_likelihood(x, num_samples=7, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(-log_px.mean(), out.loss.detach(), rtol=1e-5, atol=1e-4)
    assert out.latents.shape == (5, 4) and out.reconstruction.shape == x.shape


def test_importance_weighted_bound_is_non_decreasing_in_k_on_average():
    torch.manual_seed(0)
    x = binary_images(16)
    model = train_briefly(IWAEModel(IWAEConfig(num_importance_samples=1, **TINY)), x)
    bounds = []
    with torch.no_grad():
        for k in (1, 2, 5, 20):
            model.config.num_importance_samples = k
            draws = torch.stack([-model(pixel_values=x).loss for _ in range(200)])
            bounds.append(draws.mean().item())
    assert all(a <= b + 1e-3 for a, b in zip(bounds, bounds[1:])), bounds
    assert bounds[-1] - bounds[0] > 0.1, bounds  # and strictly tighter somewhere


def test_miwae_averages_m_independent_k_sample_bounds():
    torch.manual_seed(0)
    model = MIWAEModel(MIWAEConfig(num_bounds=3, num_importance_samples=4, **TINY))
    x = binary_images(5)
    out = model(pixel_values=x, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(12, 5, 4, generator=torch.Generator().manual_seed(2))
    log_w = log_weights_by_hand(model, x, eps).double().view(3, 4, 5)  # sample m·K + k is bound m's k-th
    expected = -(torch.logsumexp(log_w, dim=1) - math.log(4)).mean()
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-4)
    # M = 1 is the IWAE with the same K and noise.
    iwae = IWAEModel(IWAEConfig(num_importance_samples=4, **TINY))
    iwae.load_state_dict(model.state_dict())
    model.config.num_bounds = 1
    torch.testing.assert_close(model(pixel_values=x, generator=torch.Generator().manual_seed(5)).loss,
                               iwae(pixel_values=x, generator=torch.Generator().manual_seed(5)).loss)


# ---- VampPrior ---------------------------------------------------------------------------------------------


def test_vampprior_log_density_is_the_explicit_mixture_of_pseudo_posteriors():
    torch.manual_seed(0)
    model = VampVAEModel(VampVAEConfig(num_pseudo_inputs=6, pseudo_input_std=0.3, **TINY)).double()
    params = model.encoder(model.pseudo_inputs.weight.clamp(0, 1))
    mean, logvar = params.chunk(2, dim=1)
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(6, dtype=torch.float64)),
                                Independent(Normal(mean, torch.exp(0.5 * logvar)), 1))
    z = torch.randn(3, 5, 4, dtype=torch.float64) * 2
    torch.testing.assert_close(model.prior_log_prob(z), mixture.log_prob(z))
    # The prior's samples follow the mixture: their mean and covariance match its moments.
    samples = model.sample_prior(40000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples.mean(0), mixture.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(samples.var(0), mixture.variance, atol=0.05, rtol=0.05)


def test_vampprior_regulariser_and_likelihood_use_the_mixture():
    torch.manual_seed(0)
    model = VampVAEModel(VampVAEConfig(num_pseudo_inputs=5, **TINY))
    x = binary_images(4)
    out = model(pixel_values=x, generator=torch.Generator().manual_seed(1))
    posterior = out.latent_dist
    expected = posterior.log_prob(out.latents) - model.prior_log_prob(out.latents)
    torch.testing.assert_close(out.regularisation_loss, expected.mean())
    out.loss.backward()
    assert model.pseudo_inputs.weight.grad.abs().sum() > 0  # the pseudo-inputs are learned through the prior
    assert model.pseudo_inputs().min() >= 0 and model.pseudo_inputs().max() <= 1
    # log_likelihood's importance weights use the VampPrior: K = 1 equals minus the loss with the same noise.
    with torch.no_grad():
        same = model(pixel_values=x, generator=torch.Generator().manual_seed(4)).loss
        log_px = model.log_likelihood(x, num_samples=1, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(-log_px.mean(), same, rtol=1e-5, atol=1e-4)


# ---- every family: a few steps of training, save, reload, generate --------------------------------------

FAMILY_CONFIGS = {
    "iwae": dict(num_importance_samples=3),
    "miwae": dict(num_bounds=2, num_importance_samples=2),
    "vamp_vae": dict(num_pseudo_inputs=8),
}


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_family_trains_saves_reloads_and_generates(tmp_path, name):
    torch.manual_seed(0)
    config_class, model_class = hf_vae.MODELS[name]
    model = model_class(config_class(**TINY, **FAMILY_CONFIGS[name]))
    x = binary_images(16)
    with torch.no_grad():
        before = model(pixel_values=x, generator=torch.Generator().manual_seed(0)).loss
    train_briefly(model, x, steps=30)
    with torch.no_grad():
        after = model(pixel_values=x, generator=torch.Generator().manual_seed(0)).loss
    assert after < before
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    samples = loaded.generate(4, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (4, 1, 8, 8)
    torch.testing.assert_close(samples, model.generate(4, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_family_model_card_describes_its_objective(name):
    from hf_vae.integrations.model_card import render_model_card

    config_class, model_class = hf_vae.MODELS[name]
    model = model_class(config_class(**TINY, **FAMILY_CONFIGS[name]))
    card = render_model_card(model, repo_id=f"alice/{name}", metrics={"nll": 80.0})
    assert model_class.__name__ in card.text and "## Training objective" in card.text
    assert CARD_TEXT[name] in card.text


CARD_TEXT = {
    "iwae": "K = 3",
    "miwae": "M = 2, K = 2",
    "vamp_vae": "VampPrior, 8 pseudo-inputs",
}
