"""The other VAE families: each formula against an independent computation, and each family end to end."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import hf_vae
from hf_vae.distributions import DiagonalGaussianDistribution
from hf_vae import (
    InfoVAEConfig,
    InfoVAEModel,
    IWAEConfig,
    IWAEModel,
    MIWAEConfig,
    MIWAEModel,
    RAEConfig,
    RAEModel,
    VAEConfig,
    VAEModel,
    VampVAEConfig,
    VampVAEModel,
    WAEConfig,
    WAEModel,
)
from hf_vae.latent_density import GaussianMixtureDensity
from hf_vae.mmd import mmd_unbiased

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
            draws = torch.stack([-model(pixel_values=x, sample_posterior=True).loss for _ in range(200)])
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
    posterior = DiagonalGaussianDistribution(mean=out.posterior_mean, logvar=out.posterior_logvar)
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


# ---- MMD: InfoVAE and WAE ------------------------------------------------------------------------------------


def mmd_numpy(x, y, kernel, scales, bandwidth):
    """Gretton et al.'s unbiased MMD², with explicit loops over the pairs."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    base = 2.0 * x.shape[1] * bandwidth ** 2

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(s * base / (s * base + d2) if kernel == "imq" else math.exp(-d2 / (s * base)) for s in scales)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel,scales,bandwidth", [("imq", (1.0,), 1.0), ("rbf", (1.0,), 0.7),
                                                     ("imq", (0.1, 0.5, 2.0), 1.0), ("rbf", (0.5, 3.0), 1.3)])
def test_mmd_matches_a_numpy_implementation(kernel, scales, bandwidth):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64) + 0.5
    expected = mmd_numpy(x.numpy(), y.numpy(), kernel, scales, bandwidth)
    assert mmd_unbiased(x, y, kernel, scales, bandwidth).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_is_zero_in_expectation_for_identical_distributions(kernel):
    g = torch.Generator().manual_seed(1)
    same = torch.stack([mmd_unbiased(torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g), kernel)
                        for _ in range(2000)])
    shifted = torch.stack([mmd_unbiased(torch.randn(16, 4, generator=g) + 0.5, torch.randn(16, 4, generator=g), kernel)
                           for _ in range(200)])
    assert abs(same.mean()) < 4 * same.std() / math.sqrt(len(same))  # unbiased: no offset at q = p
    assert (same < 0).any()  # a U-statistic, not a squared norm
    assert shifted.mean() > 10 * same.std() / math.sqrt(len(same))  # and it sees a difference


def test_info_vae_loss_weights_kl_and_mmd_as_zhao_et_al():
    model = InfoVAEModel(InfoVAEConfig(alpha=0.3, mmd_lambda=50.0, **TINY))
    x = binary_images(8)
    out = model(pixel_values=x, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(2)  # the generator draws the posterior sample, then the MMD's prior
    torch.randn(8, 4, generator=generator)
    prior = torch.randn(8, 4, generator=generator)
    mmd = mmd_numpy(out.latents.detach().numpy(), prior.numpy(), "rbf", (0.5,), 1.0)
    assert out.mmd.item() == pytest.approx(mmd, rel=1e-4, abs=1e-6)
    expected = out.reconstruction_loss + 0.7 * out.kl + (0.3 + 50.0 - 1.0) * out.mmd
    torch.testing.assert_close(out.loss, expected)


def test_wae_is_deterministic_and_penalises_the_aggregate_posterior():
    model = WAEModel(WAEConfig(mmd_weight=10.0, **TINY))
    x = binary_images(8)
    torch.manual_seed(3)
    out = model(pixel_values=x)
    torch.testing.assert_close(out.latents, model.encoder(x))  # no noise: z = E(x)
    torch.manual_seed(3)
    mmd = mmd_numpy(out.latents.detach().numpy(), torch.randn(8, 4).numpy(), "imq", WAEConfig().kernel_scales, 1.0)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 10.0 * torch.tensor(mmd, dtype=torch.float32))
    with pytest.raises(NotImplementedError, match="density"):
        model.log_likelihood(x, num_samples=2)


# ---- RAE and the ex-post latent density ----------------------------------------------------------------------


def test_rae_l2_loss_penalises_codes_and_decoder_weights():
    model = RAEModel(RAEConfig(latent_weight=0.1, decoder_weight=1e-3, **TINY))
    x = binary_images(6)
    out = model(pixel_values=x)
    z = model.encoder(x)
    weights = sum(float((p.detach() ** 2).sum()) for p in model.decoder.parameters())
    expected = out.reconstruction_loss + 0.1 * 0.5 * (z ** 2).sum(1).mean() + 1e-3 * weights
    torch.testing.assert_close(out.loss, expected)


def test_rae_gradient_penalty_is_the_decoders_summed_jacobian_at_the_codes():
    model = RAEModel(RAEConfig(latent_weight=0.0, decoder_regulariser="gradient_penalty", decoder_weight=2.0, **TINY))
    x = binary_images(3)
    out = model(pixel_values=x)
    z = model.encoder(x).detach()
    penalty = 0.0
    for i in range(3):  # the Jacobian of one example's decoder output, summed over the outputs
        jacobian = torch.autograd.functional.jacobian(lambda v: model.decoder(v[None])[0], z[i])  # (1, 8, 8, 4)
        penalty += float(jacobian.flatten(0, -2).sum(0).pow(2).sum())
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 2.0 * torch.tensor(penalty / 3))
    out.loss.backward()  # the penalty is differentiable (double backward through the decoder)
    assert model.decoder.net[0].weight.grad is not None


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gaussian_mixture_log_likelihood_matches_scikit_learn(covariance_type):
    from sklearn.mixture import GaussianMixture

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 7.0, -2.0]])
    mixing = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, 0.8]])
    z = torch.cat([c + torch.randn(300 + 100 * i, 3, generator=g) @ mixing for i, c in enumerate(centres)]).double()
    reference = GaussianMixture(3, covariance_type=covariance_type, random_state=0, tol=1e-6, max_iter=500).fit(z.numpy())
    ours = GaussianMixtureDensity(3, 3, covariance_type).double().fit(z, tol=1e-6, max_iter=500,
                                                                       generator=torch.Generator().manual_seed(0))
    assert ours.converged_
    # The same optimum: the same average log-likelihood and, up to the order of the components, the same parameters.
    assert ours.log_prob(z).mean().item() == pytest.approx(reference.score(z.numpy()), abs=1e-6)
    ours_order, ref_order = ours.means[:, 0].argsort(), torch.as_tensor(reference.means_)[:, 0].argsort()
    torch.testing.assert_close(ours.means[ours_order], torch.as_tensor(reference.means_)[ref_order], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.weights[ours_order], torch.as_tensor(reference.weights_)[ref_order], atol=1e-5, rtol=0)
    # And given sklearn's parameters, the log-density of every point is sklearn's.
    ours.weights.copy_(torch.as_tensor(reference.weights_))
    ours.means.copy_(torch.as_tensor(reference.means_))
    covariances = torch.as_tensor(reference.covariances_)
    ours.scale.copy_(torch.linalg.cholesky(covariances) if covariance_type == "full" else covariances.sqrt())
    torch.testing.assert_close(ours.log_prob(z), torch.as_tensor(reference.score_samples(z.numpy())))


def test_gaussian_mixture_samples_follow_the_mixture():
    density = GaussianMixtureDensity(2, 2, "full").double()
    density.weights.copy_(torch.tensor([0.25, 0.75]))
    density.means.copy_(torch.tensor([[-3.0, 0.0], [2.0, 1.0]]))
    density.scale.copy_(torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.3, 0.0], [0.0, 2.0]]]))
    samples = density.sample(50000, generator=torch.Generator().manual_seed(0))
    assert (samples[:, 0] < -0.5).double().mean().item() == pytest.approx(0.25, abs=0.01)
    upper = samples[samples[:, 0] < -0.5]
    torch.testing.assert_close(torch.cov(upper.T), torch.tensor([[1.0, 0.5], [0.5, 0.5]], dtype=torch.float64),
                               atol=0.05, rtol=0)


def test_fitted_latent_density_is_saved_with_the_model_and_used_by_generate(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = VAEModel(VAEConfig(**TINY)).eval()
    data = binary_images(200)
    prior_samples = model.generate(4, generator=torch.Generator().manual_seed(1))
    density = model.fit_latent_density(data, num_components=3, batch_size=64, generator=torch.Generator().manual_seed(0))
    codes = model.encode(data).latent_dist.mode()
    assert density.log_prob(codes).mean() > model.prior_log_prob(codes).mean()  # it fits the codes better than p(z)
    samples = model.generate(4, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(samples, prior_samples)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.latent_density_components == 3
    torch.testing.assert_close(loaded.latent_density.means, density.means)
    torch.testing.assert_close(loaded.generate(4, generator=torch.Generator().manual_seed(1)), samples)


# ---- every family: a few steps of training, save, reload, generate --------------------------------------

FAMILY_CONFIGS = {
    "iwae": dict(num_importance_samples=3),
    "miwae": dict(num_bounds=2, num_importance_samples=2),
    "vamp_vae": dict(num_pseudo_inputs=8),
    "info_vae": dict(mmd_lambda=10.0),
    "wae": dict(mmd_weight=10.0),
    "rae": dict(latent_density_components=2),
    "beta_tcvae": dict(beta=6.0, dataset_size=1000),
    "factor_vae": dict(gamma=20.0, discriminator_hidden_dims=[16]),
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
    "info_vae": "(α + λ − 1) = 9.0",
    "wae": "λ = 10.0",
    "rae": "2-component Gaussian mixture",
    "beta_tcvae": "β = 6.0",
    "factor_vae": "γ = 20.0",
}


# ---- through the trainer -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("name,extra", [("rae", {}), ("iwae", {"num_importance_samples": 2})])
def test_family_trains_from_the_trainer(tmp_path, name, extra):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from hf_vae.training import DataArguments, TrainArguments, train

    args = TrainArguments(model=name, output_dir=str(tmp_path / name), max_steps=4, batch_size=8, eval_steps=0,
                          checkpointing_steps=0, report_to="none", eval_importance_samples=4,
                          final_eval_max_examples=16, eval_batch_size=16, num_sample_images=4,
                          latent_density_examples=64)
    record = train(args, DataArguments(num_train_examples=100),
                   dict(image_size=16, hidden_dims=[16], latent_dim=3, **extra))
    metrics = record["metrics"]
    if name == "rae":  # no density: reconstruction metrics only; the mixture was fitted to the training codes
        assert "nll" not in metrics and "neg_elbo" not in metrics and "mse" in metrics
        weights = load_file(tmp_path / name / "model.safetensors")
        assert weights["latent_density.means"].shape == (10, 3) and weights["latent_density.means"].abs().sum() > 0
        model = AutoModel.from_pretrained(tmp_path / name)
        assert model.generate(2).shape == (2, 1, 16, 16)
    else:
        assert {"neg_elbo", "nll"} <= set(metrics)


# ---- β-TCVAE ------------------------------------------------------------------------------------------------


def test_beta_tcvae_terms_sum_to_the_kl_on_average():
    from hf_vae import BetaTCVAEConfig, BetaTCVAEModel

    torch.manual_seed(0)
    model = BetaTCVAEModel(BetaTCVAEConfig(beta=1.0, dataset_size=500, **TINY))
    x = binary_images(8)
    with torch.no_grad():
        outs = [model(pixel_values=x) for _ in range(2000)]
    total = torch.stack([o.mutual_information + o.total_correlation + o.dimension_wise_kl for o in outs])
    assert abs(total.mean() - outs[0].kl) < 4 * total.std() / math.sqrt(len(total))
    # With α = β = γ = 1 the regulariser is the one-sample KL log q(z|x) − log p(z), whatever the estimator.
    out = model(pixel_values=x, generator=torch.Generator().manual_seed(0))
    one_sample_kl = DiagonalGaussianDistribution(mean=out.posterior_mean, logvar=out.posterior_logvar).log_prob(out.latents) - Normal(0.0, 1.0).log_prob(out.latents).sum(1)
    torch.testing.assert_close(out.regularisation_loss, one_sample_kl.mean())


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_beta_tcvae_terms_match_a_brute_force_computation(estimator):
    from hf_vae.modeling_beta_tcvae import kl_decomposition

    g = torch.Generator().manual_seed(0)
    batch, dim, n = 5, 3, 40
    mean = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    logvar = torch.randn(batch, dim, generator=g, dtype=torch.float64) * 0.3
    z = mean + torch.exp(0.5 * logvar) * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    terms = kl_decomposition(mean, logvar, z, n, estimator)

    def weight(i, j):  # the importance weight of q(z_i|x_j) in the estimate of q(z_i)
        if estimator == "mws":
            return 1.0 / (n * batch)
        return 1.0 / n if i == j else (n - 1) / (n * (batch - 1))

    for i in range(batch):
        q = lambda j, dims=slice(None): Normal(mean[j, dims], torch.exp(0.5 * logvar[j, dims]))  # noqa: E731
        log_qzx = q(i).log_prob(z[i]).sum()
        qz = sum(weight(i, j) * q(j).log_prob(z[i]).sum().exp() for j in range(batch))
        qz_dims = [sum(weight(i, j) * q(j, d).log_prob(z[i, d]).exp() for j in range(batch)) for d in range(dim)]
        log_prod = sum(torch.log(v) for v in qz_dims)
        log_pz = Normal(0.0, 1.0).log_prob(z[i]).sum()
        torch.testing.assert_close(terms["mutual_information"][i], log_qzx - torch.log(qz))
        torch.testing.assert_close(terms["total_correlation"][i], torch.log(qz) - log_prod)
        torch.testing.assert_close(terms["dimension_wise_kl"][i], log_prod - log_pz)


def test_beta_tcvae_weights_the_total_correlation_and_needs_the_dataset_size():
    from hf_vae import BetaTCVAEConfig, BetaTCVAEModel

    model = BetaTCVAEModel(BetaTCVAEConfig(beta=6.0, alpha=0.5, gamma=2.0, dataset_size=100, **TINY))
    out = model(pixel_values=binary_images(6))
    expected = 0.5 * out.mutual_information + 6.0 * out.total_correlation + 2.0 * out.dimension_wise_kl
    torch.testing.assert_close(out.regularisation_loss, expected)
    with pytest.raises(ValueError, match="dataset_size"):
        BetaTCVAEModel(BetaTCVAEConfig(**TINY))(pixel_values=binary_images(4))
    with pytest.raises(ValueError, match="vector latent"):
        BetaTCVAEConfig(backbone="conv", image_size=8, block_out_channels=[8, 16], norm_num_groups=4)


# ---- FactorVAE ----------------------------------------------------------------------------------------------


def test_permute_dims_shuffles_each_dimension_independently():
    from hf_vae.training.factor_vae import permute_dims

    z = torch.arange(40.0).view(10, 4) + torch.tensor([0.0, 100.0, 200.0, 300.0])
    shuffled = permute_dims(z, torch.Generator().manual_seed(0))
    for d in range(4):  # every column keeps its values (the marginals q(z_j))...
        assert torch.equal(shuffled[:, d].sort().values, z[:, d])
    rows = {tuple((r - torch.tensor([0.0, 100.0, 200.0, 300.0])).tolist()) for r in shuffled}
    assert any(len(set(r)) > 1 for r in rows)  # ...but the rows (the joint) are broken up


def test_factor_vae_discriminator_estimates_the_total_correlation_of_a_gaussian():
    """Density-ratio trick on z ~ N(0, [[1, ρ], [ρ, 1]]): TC = −½ log(1 − ρ²) in closed form."""
    from hf_vae import FactorVAEConfig, FactorVAEModel
    from hf_vae.training.factor_vae import FactorVAEObjective, LatentDiscriminator

    torch.manual_seed(0)
    model = FactorVAEModel(FactorVAEConfig(latent_dim=2, image_size=8, hidden_dims=[8],
                                           discriminator_hidden_dims=[64, 64]))
    objective = FactorVAEObjective(model)
    assert isinstance(objective.discriminator, LatentDiscriminator)
    optimizer = torch.optim.Adam(objective.discriminator_parameters(), lr=3e-3)
    rho = 0.8
    mix = torch.tensor([[1.0, 0.0], [rho, math.sqrt(1 - rho ** 2)]])
    for _ in range(600):
        z = torch.randn(512, 2) @ mix.T
        loss, _ = objective.discriminator_loss({}, type("Out", (), {"latents": z})(), 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        estimate = objective.total_correlation(torch.randn(20000, 2) @ mix.T).item()
    assert estimate == pytest.approx(-0.5 * math.log(1 - rho ** 2), rel=0.25)


def test_factor_vae_generator_loss_adds_gamma_tc_without_touching_the_discriminator():
    from hf_vae import FactorVAEConfig, FactorVAEModel
    from hf_vae.training.factor_vae import FactorVAEObjective

    torch.manual_seed(0)
    model = FactorVAEModel(FactorVAEConfig(gamma=7.0, discriminator_hidden_dims=[16], **TINY))
    objective = FactorVAEObjective(model)
    loss, logs, output = objective.generator_loss(model, {"pixel_values": binary_images(8)}, 0)
    logits = objective.discriminator(output.latents.detach())
    torch.testing.assert_close(loss.detach(), output.loss.detach() + 7.0 * (logits[:, 0] - logits[:, 1]).mean())
    loss.backward()
    assert all(p.grad is None for p in objective.discriminator_parameters())
    assert model.encoder.net[0].weight.grad is not None  # the TC term reaches the encoder


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_factor_vae_trains_its_discriminator_in_the_trainer_checkpointed_not_published(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from hf_vae.training import DataArguments, TrainArguments, train

    betas = []  # Adam's betas of each optimiser the trainer builds, in order

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, *args, **kwargs):
            super().__init__(params, *args, **kwargs)
            betas.append(tuple(self.defaults["betas"]))

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    args = TrainArguments(model="factor_vae", output_dir=str(tmp_path / "run"), max_steps=4, batch_size=8,
                          eval_steps=0, checkpointing_steps=2, report_to="jsonl", logging_steps=1,
                          eval_importance_samples=4, final_eval_max_examples=16, eval_batch_size=16,
                          num_sample_images=4)
    record = train(args, DataArguments(num_train_examples=100),
                   dict(image_size=16, hidden_dims=[16], latent_dim=3, discriminator_hidden_dims=[8]))
    assert {"d_loss", "tc"} <= set(record["train"]["last_logs"])
    published = load_file(tmp_path / "run" / "model.safetensors")
    assert not any("discriminator" in key for key in published)
    state = load_file(tmp_path / "run" / "checkpoints" / "checkpoint-4" / "training_state.safetensors")
    discriminator_keys = [key for key in state if "objective" in key and "discriminator" in key]
    assert len(discriminator_keys) == 4, list(state)  # two Linear layers: weights and biases
    # Adam as in Kim & Mnih: (0.9, 0.999) for the VAE, (0.5, 0.9) for the discriminator.
    assert sorted(betas) == [(0.5, 0.9), (0.9, 0.999)], betas
    # Resuming restores the discriminator into the objective (FactorVAEObjective.load_state_dict).
    from hf_vae.training.factor_vae import FactorVAEObjective

    restored, original = [], FactorVAEObjective.load_state_dict

    def recording_load(self, saved):
        original(self, saved)
        restored.append({k: v.clone() for k, v in self.discriminator.state_dict().items()})

    monkeypatch.setattr(FactorVAEObjective, "load_state_dict", recording_load)
    args.max_steps, args.resume_from_checkpoint = 6, "latest"
    resumed = train(args, DataArguments(num_train_examples=100),
                    dict(image_size=16, hidden_dims=[16], latent_dim=3, discriminator_hidden_dims=[8]))
    assert resumed["train"]["resumed_from"] and resumed["step"] == 6
    assert len(restored) == 1
    for key, value in restored[0].items():
        assert torch.equal(value, next(v for k, v in state.items() if k.endswith("discriminator." + key))), key
