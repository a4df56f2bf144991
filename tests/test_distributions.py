"""Posterior and likelihood formulas, each checked against an independent computation."""

import math

import pytest
import torch
from torch import distributions as D

from hf_vae.distributions import (
    BernoulliLikelihood,
    DiagonalGaussianDistribution,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    PixelLossLikelihood,
    standard_normal_log_prob,
)


def _posterior(batch=3, dims=(4, 2, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, *dims, generator=g)
    logvar = torch.randn(batch, *dims, generator=g) * 0.5
    return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)), mean, logvar


def test_closed_form_kl_matches_monte_carlo():
    posterior, _, _ = _posterior()
    g = torch.Generator().manual_seed(1)
    n = 200_000
    z = posterior.mean + posterior.std * torch.randn(n, *posterior.mean.shape, generator=g)
    log_ratio = posterior.log_prob(z) - standard_normal_log_prob(z, event_dims=3)  # (n, B)
    mc, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    assert torch.all((mc - posterior.kl()).abs() < 4 * stderr + 1e-3), (mc, posterior.kl())


def test_kl_between_two_gaussians_matches_torch_distributions():
    p, mean_p, logvar_p = _posterior(seed=0)
    q, mean_q, logvar_q = _posterior(seed=1)
    expected = D.kl_divergence(D.Normal(mean_p, (0.5 * logvar_p).exp()), D.Normal(mean_q, (0.5 * logvar_q).exp()))
    torch.testing.assert_close(p.kl(q), expected.flatten(1).sum(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.kl(), D.kl_divergence(D.Normal(mean_p, (0.5 * logvar_p).exp()),
                                                       D.Normal(0.0, 1.0)).flatten(1).sum(1), rtol=1e-5, atol=1e-5)


def test_log_prob_and_entropy_match_torch_distributions():
    posterior, mean, logvar = _posterior()
    reference = D.Normal(mean, (0.5 * logvar).exp())
    z = posterior.sample(torch.Generator().manual_seed(3))
    torch.testing.assert_close(posterior.log_prob(z), reference.log_prob(z).flatten(1).sum(1))
    torch.testing.assert_close(posterior.nll(z), -reference.log_prob(z).flatten(1).sum(1))
    torch.testing.assert_close(posterior.entropy(), reference.entropy().flatten(1).sum(1))


def test_reparameterised_gradients_match_analytic_gradients():
    # For f(z) = z², E[f] = μ² + σ², so dE/dμ = 2μ and dE/dσ = 2σ; the pathwise estimator must agree.
    mean = torch.tensor([[0.7, -1.2]], requires_grad=True)
    log_std = torch.tensor([[0.1, -0.4]], requires_grad=True)
    posterior = DiagonalGaussianDistribution(mean=mean.expand(100_000, 2), logvar=2 * log_std.expand(100_000, 2))
    posterior.sample(torch.Generator().manual_seed(0)).pow(2).mean(0).sum().backward()
    torch.testing.assert_close(mean.grad, 2 * mean.detach(), atol=0.02, rtol=0)
    std = log_std.detach().exp()
    torch.testing.assert_close(log_std.grad, 2 * std * std, atol=0.02, rtol=0)  # chain rule through σ = exp(log σ)


def test_seeded_sampling_is_reproducible_and_deterministic_mode():
    posterior, mean, _ = _posterior()
    a = posterior.sample(torch.Generator().manual_seed(5))
    b = posterior.sample(torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, posterior.sample(torch.Generator().manual_seed(6)))
    assert torch.equal(posterior.mode(), mean)
    point = DiagonalGaussianDistribution(posterior.parameters, deterministic=True)
    assert torch.equal(point.sample(), mean) and torch.all(point.kl() == 0)


def test_matches_diffusers_diagonal_gaussian():
    vae_module = pytest.importorskip("diffusers.models.autoencoders.vae")
    parameters = torch.randn(2, 8, 4, 4) * 3  # large values exercise the [-30, 20] clamp
    ours, theirs = DiagonalGaussianDistribution(parameters), vae_module.DiagonalGaussianDistribution(parameters)
    torch.testing.assert_close(ours.sample(torch.Generator().manual_seed(0)),
                               theirs.sample(torch.Generator().manual_seed(0)))
    torch.testing.assert_close(ours.kl(), theirs.kl())
    z = ours.sample()
    torch.testing.assert_close(ours.nll(z), theirs.nll(z))


def test_odd_channel_parameters_are_rejected():
    with pytest.raises(ValueError, match="even number of channels"):
        DiagonalGaussianDistribution(torch.randn(2, 3, 4, 4))


# ---- likelihoods ---------------------------------------------------------------------------------------


def test_bernoulli_nll_sums_over_every_pixel():
    x = torch.rand(4, 1, 5, 5).round()
    logits = torch.randn(4, 1, 5, 5)
    expected = -D.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(BernoulliLikelihood().nll(x, logits), expected)
    torch.testing.assert_close(BernoulliLikelihood().mean(logits), torch.sigmoid(logits))


@pytest.mark.parametrize("learn", [False, True])
def test_gaussian_and_laplace_nll_match_torch_distributions(learn):
    x, loc = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    gaussian = GaussianLikelihood(2, scale=0.3, learn_scale=learn)
    laplace = LaplaceLikelihood(2, scale=0.7, learn_scale=learn)
    torch.testing.assert_close(gaussian.nll(x, loc), -D.Normal(loc, 0.3).log_prob(x).flatten(1).sum(1))
    torch.testing.assert_close(laplace.nll(x, loc), -D.Laplace(loc, 0.7).log_prob(x).flatten(1).sum(1))
    assert isinstance(gaussian.log_scale, torch.nn.Parameter) == learn


def test_learned_scale_is_per_channel_and_receives_gradients():
    likelihood = GaussianLikelihood(3, learn_scale=True)
    with torch.no_grad():
        likelihood.log_scale.copy_(torch.tensor([0.0, 0.5, -0.5]))
    x, loc = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    scale = likelihood.log_scale.detach().exp()[None, :, None, None]
    torch.testing.assert_close(likelihood.nll(x, loc), -D.Normal(loc, scale).log_prob(x).flatten(1).sum(1))
    likelihood.nll(x, loc).sum().backward()
    assert likelihood.log_scale.grad.shape == (3,) and torch.all(likelihood.log_scale.grad != 0)


def test_likelihood_broadcasts_stacked_importance_samples():
    x = torch.rand(4, 2, 3, 3)
    params = torch.randn(5, 4, 2, 3, 3)
    for likelihood in (BernoulliLikelihood(), GaussianLikelihood(2, 0.5, True), LaplaceLikelihood(2)):
        stacked = likelihood.nll(x, params)
        assert stacked.shape == (5, 4)
        torch.testing.assert_close(stacked[2], likelihood.nll(x, params[2]))


def test_pixel_loss_is_plain_l1_and_l2():
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(PixelLossLikelihood("l1").nll(x, y), (x - y).abs().flatten(1).sum(1))
    torch.testing.assert_close(PixelLossLikelihood("l2").nll(x, y), (x - y).pow(2).flatten(1).sum(1))
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        PixelLossLikelihood("l3")


def _logistic_cdf(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t)) if t > -700 else 0.0


@pytest.mark.parametrize("mean, scale", [(0.1, 0.05), (-0.97, 0.01), (0.999, 0.3), (3.0, 0.02), (-0.5, 1e-4)])
def test_discretized_logistic_sums_to_one_over_the_256_bins_and_matches_the_cdf(mean, scale):
    likelihood = DiscretizedLogisticLikelihood(1, scale).double()
    levels = torch.arange(256, dtype=torch.float64)
    x = (-1.0 + 2.0 * levels / 255.0).view(256, 1, 1, 1)  # one image per 8-bit level
    probs = torch.exp(-likelihood.nll(x, torch.full_like(x, mean)))
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-9)
    # brute force: the logistic CDF at the bin edges x_k ± 1/255, the first and last bins open to ∓∞
    scale = math.exp(float(likelihood.log_scale))  # the scale as stored (a float32 buffer)
    expected = []
    for k in range(256):
        upper = 1.0 if k == 255 else _logistic_cdf((-1.0 + (2 * k + 1) / 255.0 - mean) / scale)
        lower = 0.0 if k == 0 else _logistic_cdf((-1.0 + (2 * k - 1) / 255.0 - mean) / scale)
        expected.append(upper - lower)
    torch.testing.assert_close(probs, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-12)


def test_discretized_logistic_is_finite_far_in_the_tails_and_rounds_to_the_nearest_bin():
    likelihood = DiscretizedLogisticLikelihood(3, 0.01)
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    nll = likelihood.nll(x, torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))  # 200 scales away from each bin
    assert torch.isfinite(nll).all() and float(nll) > 100
    near = x + torch.tensor([0.4, -0.3, 0.0]).view(1, 3, 1, 1) / 255  # still nearest to the same levels
    params = torch.randn(1, 3, 1, 1)
    torch.testing.assert_close(likelihood.nll(near, params), likelihood.nll(x, params))
