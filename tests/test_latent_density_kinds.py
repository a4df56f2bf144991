"""The pluggable ex-post latent densities: `fit_latent_density(kind="gmm" | "two_stage" | "maf" | "iaf")`.

Each density's log_prob is checked against an independent computation (the change of variables with an autograd
Jacobian for the flows, numeric integration for the two-stage VAE); fitting recovers a known Gaussian; a fitted
density is saved and loaded with the model and is what `generate` decodes; a bad kind is one clear line."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from hf_vae import VAEConfig, VAEModel
from hf_vae.latent_density import GaussianMixtureDensity, encode_dataset
from hf_vae.latent_density_flows import IAFDensity, MAFDensity
from hf_vae.latent_density_two_stage import TwoStageDensity
from hf_vae.learned_latent_density import standard_normal_log_prob
from hf_vae.training.latent_density import density_to_fit

TINY = dict(in_channels=1, image_size=8, hidden_dims=[32], latent_dim=3, backbone="mlp")
SMALL = dict(hidden_dims=[16])  # the learned densities' networks in the model-level tests
QUICK_FIT = dict(num_steps=30)
LEARNED = {"maf": MAFDensity, "iaf": IAFDensity, "two_stage": TwoStageDensity}


def _perturbed(density, seed=0, std=0.3):
    """A density with random weights (not the near-identity start) and a non-trivial standardisation, float64."""
    g = torch.Generator().manual_seed(seed)
    density = density.double()
    with torch.no_grad():
        for p in density.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
        density.shift.copy_(torch.randn(density.dim, generator=g, dtype=torch.float64))
        density.scale.copy_(torch.rand(density.dim, generator=g, dtype=torch.float64) + 0.5)
    return density


def _maf_map(density):
    """z -> the MAF's noise, composed by hand from the steps: the map whose Jacobian the density must use."""
    def to_noise(z):
        u = (z - density.shift) / density.scale
        for step in density.steps:
            mean, log_scale = step.shift_and_log_scale(u[None])
            u = ((u[None] - mean) * torch.exp(-log_scale))[0]
        return u
    return to_noise


def test_maf_log_prob_is_the_change_of_variables_with_an_autograd_jacobian():
    density = _perturbed(MAFDensity(4, num_flows=3, hidden_dims=[8]))
    z = torch.randn(5, 4, dtype=torch.float64)
    to_noise = _maf_map(density)
    for point, log_p in zip(z, density.log_prob(z)):
        reference = standard_normal_log_prob(to_noise(point)[None])[0] + torch.linalg.slogdet(jacobian(to_noise, point))[1]
        torch.testing.assert_close(log_p, reference)


def test_maf_samples_invert_its_density_map():
    density = _perturbed(MAFDensity(4, num_flows=3, hidden_dims=[8]))
    g = torch.Generator().manual_seed(1)
    z = density.sample(6, g)
    noise = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(torch.stack([_maf_map(density)(point) for point in z]), noise)


def test_iaf_log_prob_is_the_change_of_variables_of_its_sampler():
    """z = S(ε), ε ~ N(0, I): log p(S(ε)) = log N(ε) − log|det ∂S/∂ε| (the density inverts S one dimension at a
    time, the Jacobian differentiates S itself)."""
    density = _perturbed(IAFDensity(4, num_flows=3, hidden_dims=[8]), std=0.2)

    def sampler(eps):
        u = density.base_mean + torch.exp(density.base_log_scale) * eps
        for step in density.steps:
            u = step(u[None])[0][0]
        return u * density.scale + density.shift

    eps = torch.randn(5, 4, dtype=torch.float64)
    z = torch.stack([sampler(e) for e in eps])
    log_det = torch.stack([torch.linalg.slogdet(jacobian(sampler, e))[1] for e in eps])
    torch.testing.assert_close(density.log_prob(z), standard_normal_log_prob(eps) - log_det)
    # and the sampler is the same map
    g = torch.Generator().manual_seed(3)
    draws = density.sample(5, g)
    same_noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(draws, torch.stack([sampler(e) for e in same_noise]))


def test_two_stage_log_prob_against_numeric_integration():
    """In one dimension, p(z) = ∫ N(z; μ(u), γ) N(u; 0, 1) du on a fine grid (and the standardisation's Jacobian)."""
    torch.manual_seed(0)
    density = _perturbed(TwoStageDensity(1, hidden_dims=[8], num_importance_samples=200_000), std=0.2)
    z = torch.tensor([[-1.0], [0.3], [1.5]], dtype=torch.float64)
    u = torch.linspace(-9, 9, 20001, dtype=torch.float64)[:, None]
    mean = density.decoder(u)[:, 0]
    gamma = density.log_gamma.exp()
    integrand_log = (-0.5 * (((z[:, 0, None] - density.shift) / density.scale - mean) ** 2 / gamma
                             + torch.log(2 * math.pi * gamma)) + standard_normal_log_prob(u)[None])
    reference = torch.logsumexp(integrand_log, dim=1) + math.log(u[1, 0] - u[0, 0]) - density.scale.log().sum()
    with torch.no_grad():
        torch.testing.assert_close(density.log_prob(z), reference, atol=0.02, rtol=0)


def test_two_stage_gamma_is_the_value_that_maximises_the_bound():
    """Each fitting step sets γ in closed form (the mean squared error); autograd of the same draw's bound in log γ
    must vanish there, and after fitting γ is the error over all fitted latents."""
    density = TwoStageDensity(3, hidden_dims=[8]).double()
    u = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(1)
    density.fit_loss(u)
    torch.manual_seed(1)
    mean, log_var = density.encode(u)
    decoded = density.decoder(mean + (0.5 * log_var).exp() * torch.randn(1, *mean.shape, dtype=torch.float64))[0]
    log_gamma = density.log_gamma.clone().requires_grad_()
    bound = -0.5 * ((u - decoded).pow(2) / log_gamma.exp() + log_gamma + math.log(2 * math.pi)).sum()
    (slope,) = torch.autograd.grad(bound, log_gamma)
    assert abs(slope.item()) < 1e-9 * u.numel()

    torch.manual_seed(2)
    density.finish_fit(u)
    torch.manual_seed(2)
    mean, log_var = density.encode(u)
    squared = (u - density.decoder(mean + (0.5 * log_var).exp() * torch.randn_like(mean))).pow(2).mean()
    torch.testing.assert_close(density.log_gamma, squared.log())


def _gaussian_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([2.0, -1.0])
    cholesky = torch.tensor([[1.5, 0.0], [0.9, 0.4]])
    return mean + torch.randn(n, 2, generator=g) @ cholesky.T, mean, cholesky @ cholesky.T


#: (sizes, training) per kind: enough to recover a 2-D Gaussian, small enough for a test
RECOVERY = {"maf": (dict(num_flows=2, hidden_dims=[32, 32]), dict(num_steps=300, learning_rate=1e-2)),
            "iaf": (dict(num_flows=2, hidden_dims=[32, 32]), dict(num_steps=300, learning_rate=1e-2)),
            "two_stage": (dict(hidden_dims=[32, 32]), dict(num_steps=1500, learning_rate=3e-3))}


@pytest.mark.parametrize("kind", ["maf", "iaf", "two_stage"])
def test_fitting_recovers_a_known_gaussian(kind):
    torch.manual_seed(0)
    data, mean, covariance = _gaussian_data(4000, 0)
    held_out, _, _ = _gaussian_data(2000, 1)
    sizes, training = RECOVERY[kind]
    density = LEARNED[kind](2, **sizes).fit(data, generator=torch.Generator().manual_seed(0), **training)
    truth = torch.distributions.MultivariateNormal(mean, covariance)
    with torch.no_grad():
        gap = (truth.log_prob(held_out) - density.log_prob(held_out)).mean()  # ≥ 0 in expectation: a KL
        samples = density.sample(20000, torch.Generator().manual_seed(2))
    assert gap < 0.1, f"{kind}: held-out log-likelihood {gap:.3f} nats below the true density's"
    torch.testing.assert_close(samples.mean(0), mean, atol=0.1, rtol=0)
    spread = torch.cov(samples.T)
    if kind == "two_stage":  # its samples are the decoder's means μ(u) (Dai & Wipf, sec. 4): p(z) adds γ·I
        spread = spread + density.log_gamma.exp() * torch.diag(density.scale.pow(2))
    torch.testing.assert_close(spread, covariance, atol=0.25, rtol=0)


def test_a_fitting_step_with_a_non_finite_loss_is_skipped(monkeypatch):
    """One batch whose likelihood overflows must not write inf/NaN into the weights."""
    density = LEARNED["iaf"](2, **RECOVERY["iaf"][0])
    data, _, _ = _gaussian_data(500, 0)
    fit_loss, calls = type(density).fit_loss, []

    def overflow_once(self, u):
        calls.append(1)
        loss = fit_loss(self, u)
        return loss * float("inf") if len(calls) == 1 else loss

    monkeypatch.setattr(type(density), "fit_loss", overflow_once)
    density.fit(data, num_steps=20, generator=torch.Generator().manual_seed(0))
    assert density.skipped_steps_ == 1
    assert all(torch.isfinite(p).all() for p in density.parameters())
    assert torch.isfinite(density.sample(100, torch.Generator().manual_seed(1))).all()


def _model_and_data():
    torch.manual_seed(0)
    model = VAEModel(VAEConfig(**TINY)).eval()
    data = (torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    return model, data


@pytest.mark.parametrize("kind", ["maf", "iaf", "two_stage"])
def test_saved_with_the_model_and_used_by_generate(kind, tmp_path):
    from transformers import AutoModel

    model, data = _model_and_data()
    density = model.fit_latent_density(data, kind=kind, settings=SMALL, fit_options=QUICK_FIT,
                                       generator=torch.Generator().manual_seed(0))
    assert isinstance(density, LEARNED[kind]) and model.latent_density is density
    assert not any(p.requires_grad for p in density.parameters())  # fitted: not trained with the model
    # generate decodes the density's draws
    samples = model.generate(5, generator=torch.Generator().manual_seed(1))
    latents = density.sample(5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples, model.decode(latents).sample)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.latent_density_kind == kind
    assert loaded.config.latent_density_settings == density.settings
    assert type(loaded.latent_density) is LEARNED[kind]
    torch.testing.assert_close(loaded.generate(5, generator=torch.Generator().manual_seed(1)), samples)
    if kind != "two_stage":  # the two-stage VAE's log_prob is a stochastic estimate
        z = encode_dataset(model, data[:4])  # where the density was fitted (far from it an IAF's inverse overflows)
        torch.testing.assert_close(loaded.latent_density.log_prob(z), density.log_prob(z))


def test_gmm_stays_the_default_and_is_the_mixture_fitted_directly():
    model, data = _model_and_data()
    density = model.fit_latent_density(data, num_components=3, generator=torch.Generator().manual_seed(0))
    direct = GaussianMixtureDensity(3, 3).fit(encode_dataset(model, data), generator=torch.Generator().manual_seed(0))
    for name in ("weights", "means", "scale"):
        assert torch.equal(getattr(density, name), getattr(direct, name)), name
    assert getattr(model.config, "latent_density_kind", "gmm") == "gmm"


def test_refitting_another_kind_replaces_the_density(tmp_path):
    from transformers import AutoModel

    model, data = _model_and_data()
    model.fit_latent_density(data, kind="maf", settings=SMALL, fit_options=QUICK_FIT)
    model.fit_latent_density(data, num_components=2, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded.latent_density, GaussianMixtureDensity) and loaded.latent_density.num_components == 2


@pytest.mark.parametrize("call,message", [
    (dict(kind="flow"), r"Expected a latent density kind in \('gmm', 'two_stage', 'maf', 'iaf'\), got 'flow'\."),
    (dict(kind="maf", settings=dict(num_flows=0)), r"Expected a positive int num_flows for the maf density, got 0\."),
    (dict(kind="iaf", settings=dict(hidden_dims=[])), r"hidden_dims of the iaf density as a non-empty list"),
    (dict(kind="two_stage", fit_options=dict(num_steps=-1)), r"positive int num_steps .* two_stage density"),
])
def test_bad_requests_are_one_clear_line(call, message):
    model, data = _model_and_data()
    with pytest.raises(ValueError, match=message) as error:
        model.fit_latent_density(data[:20], **call)
    assert "\n" not in str(error.value)


def test_trainer_choice_of_density():
    model, _ = _model_and_data()
    assert density_to_fit(None, "gmm", model) is None  # a VAE: no mixture unless asked
    assert density_to_fit(5, "gmm", model) == ("gmm", 5)
    assert density_to_fit(None, "maf", model) == ("maf", 0)
    assert density_to_fit(0, "iaf", model) is None
    with pytest.raises(ValueError, match=">= 0, got -1"):
        density_to_fit(-1, "two_stage", model)


def test_bad_kind_on_the_command_line_is_refused():
    from hf_vae.training import TrainArguments

    with pytest.raises(ValueError, match=r"Expected `latent_density_kind` in \('gmm', 'two_stage', 'maf', 'iaf'\)"):
        TrainArguments(model="vae", latent_density_kind="flows")
