"""The Hamiltonian VAE (hf_vae/modeling_hvae.py): its loss against eq. 21 computed directly, with a leapfrog and
densities written out here, and its importance-sampled log p(x) against the bound at K = 1, as K grows, and against
the exact marginal of a linear Gaussian decoder."""

import math

import pytest
import torch
import torch.nn as nn

from hf_vae import HVAEConfig, HVAEModel
from hf_vae.configuration_base import ConfigFieldError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_hvae(**overrides):
    torch.manual_seed(0)
    fields = dict(in_channels=1, image_size=8, backbone="mlp", hidden_dims=[32], latent_dim=3, num_leapfrog_steps=3,
                  leapfrog_step_size=0.1, beta_zero=0.4)
    fields.update(overrides)
    return HVAEModel(HVAEConfig(**fields)).double()


def binary_images(batch=5, seed=1):
    return (torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) > 0.5).double()


def log_normal(value, mean, std):
    return torch.distributions.Normal(mean, std).log_prob(value).sum(-1)


def direct_negative_bound(model, x, seed):
    """Minus eq. 21's integrand per example, drawn as forward draws (ε for z₀, then γ, from one generator)."""
    generator = torch.Generator().manual_seed(seed)
    mean, logvar = model.encoder(x, None).chunk(2, dim=1)
    std = (0.5 * logvar).exp()
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    gamma = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    z0 = mean + std * eps

    def log_joint(z):  # log p(x|z) + log p(z) for a Bernoulli decoder of logits
        logits = model.decoder(z, None)
        log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
        return log_px + log_normal(z, torch.zeros_like(z), torch.ones_like(z))

    def grad_u(z):
        z = z.detach().requires_grad_()
        return -torch.autograd.grad(log_joint(z).sum(), z)[0]

    config = model.config
    k_steps, eps_lf, beta0 = config.num_leapfrog_steps, config.leapfrog_step_size, config.beta_zero
    sqrt_beta = lambda k: 1 / ((1 - 1 / math.sqrt(beta0)) * k ** 2 / k_steps ** 2 + 1 / math.sqrt(beta0))
    z, rho = z0.detach(), gamma / math.sqrt(beta0)
    for k in range(1, k_steps + 1):
        rho_half = rho - eps_lf / 2 * grad_u(z)
        z = z + eps_lf * rho_half
        rho = (rho_half - eps_lf / 2 * grad_u(z)) * sqrt_beta(k - 1) / sqrt_beta(k)
    ones = torch.ones_like(z)
    with torch.no_grad():
        return -(log_joint(z) + log_normal(rho, 0 * ones, ones) - log_normal(z0, mean, std)
                 - log_normal(gamma, 0 * ones, ones))


def test_loss_is_minus_eq_21_computed_directly():
    model = tiny_hvae().eval()
    x = binary_images()
    with torch.no_grad():
        loss = model(x, generator=torch.Generator().manual_seed(7)).loss
    assert math.isclose(loss.item(), direct_negative_bound(model, x, 7).mean().item(), rel_tol=1e-9)


def test_log_likelihood_with_one_sample_is_the_bound_of_the_same_draw():
    model = tiny_hvae().eval()
    x = binary_images()
    for seed in range(3):
        estimate = model.log_likelihood(x, num_samples=1, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(estimate, -direct_negative_bound(model, x, seed))


def test_log_likelihood_tightens_with_more_samples():
    model = tiny_hvae().eval()
    x = binary_images()

    def average(k, draws):
        return torch.stack([model.log_likelihood(x, num_samples=k, generator=torch.Generator().manual_seed(s))
                            for s in range(draws)]).mean(0)

    one, ten, hundred = average(1, 40), average(10, 20), average(100, 10)
    assert (one < ten).all() and (ten.mean() < hundred.mean())


class LinearGaussianDecoder(nn.Module):
    """x = W z + b (the mean of a Gaussian likelihood), so that p(x) = N(b, W Wᵀ + σ² I) is known exactly."""

    def __init__(self, latent_dim, shape):
        super().__init__()
        self.shape = shape
        self.linear = nn.Linear(latent_dim, math.prod(shape)).double()

    def forward(self, z, condition):
        return self.linear(z).view(-1, *self.shape)


class NearPosteriorEncoder(nn.Module):
    """q(z|x) = N(m(x), 2·diag Σ) around the exact posterior N(m(x), Σ) of the linear Gaussian model, wider than it
    so that the importance weights have a small variance."""

    def __init__(self, weight, bias, sigma):
        super().__init__()
        self.weight, self.bias, self.sigma = weight, bias, sigma
        identity = torch.eye(weight.shape[1], dtype=weight.dtype)
        self.covariance = torch.linalg.inv(identity + weight.T @ weight / sigma ** 2)

    def forward(self, x, condition):
        mean = (x.flatten(1) - self.bias) @ self.weight @ self.covariance / self.sigma ** 2
        return torch.cat([mean, (2 * self.covariance.diagonal()).log().expand_as(mean)], dim=1)


def test_log_likelihood_converges_to_the_exact_marginal_of_a_linear_gaussian_model():
    sigma = 0.5
    model = tiny_hvae(image_size=4, latent_dim=2, likelihood="gaussian", likelihood_scale=sigma).eval()
    model.decoder = LinearGaussianDecoder(2, (1, 4, 4))
    weight, bias = model.decoder.linear.weight.detach(), model.decoder.linear.bias.detach()
    model.encoder = NearPosteriorEncoder(weight, bias, sigma)
    x = (bias + torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) @ weight.T
         + sigma * torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    exact = torch.distributions.MultivariateNormal(bias, weight @ weight.T + sigma ** 2 * torch.eye(16)).log_prob(x)
    estimate = model.log_likelihood(x.view(3, 1, 4, 4), num_samples=10000, chunk_size=2500,
                                    generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(estimate, exact, atol=0.02, rtol=0)
    bound = torch.stack([model.log_likelihood(x.view(3, 1, 4, 4), num_samples=1,
                                              generator=torch.Generator().manual_seed(seed)) for seed in range(100)])
    assert (bound.mean(0) < exact).all()  # the ELBO, below log p(x) in expectation


def test_forward_without_a_sample_is_the_vae_pass_at_the_posterior_mode():
    model = tiny_hvae().eval()
    x = binary_images()
    with torch.no_grad():
        output = model(x)
        mean, logvar = model.encoder(x, None).chunk(2, dim=1)
        reconstruction = -torch.distributions.Bernoulli(logits=model.decoder(mean, None)).log_prob(x).flatten(1).sum(-1)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(output.loss, (reconstruction + kl).mean())


def test_training_reaches_the_step_size_and_beta_zero_when_learned():
    model = tiny_hvae(learn_leapfrog_step_size=True, learn_beta_zero=True).train()
    model(binary_images()).loss.backward()
    assert model.leapfrog.log_step_size.grad.abs() > 0 and model.leapfrog.log_beta_zero.grad.abs() > 0
    assert not tiny_hvae().leapfrog.log_step_size.requires_grad


def test_per_dimension_step_sizes_start_at_the_configured_value_and_are_learned_each():
    model = tiny_hvae(per_dimension_step_size=True, learn_leapfrog_step_size=True).train()
    step_size = model.leapfrog.log_step_size
    assert step_size.shape == (3,)
    torch.testing.assert_close(step_size.exp(), torch.full((3,), 0.1, dtype=torch.float64))
    model(binary_images()).loss.backward()
    assert (step_size.grad.abs() > 0).all() and len(set(step_size.grad.tolist())) == 3


def test_per_dimension_step_sizes_equal_to_the_scalar_give_the_same_loss():
    scalar, vector = tiny_hvae(), tiny_hvae(per_dimension_step_size=True)
    x = binary_images()
    torch.testing.assert_close(scalar(x, generator=torch.Generator().manual_seed(3)).loss,
                               vector(x, generator=torch.Generator().manual_seed(3)).loss)


def test_the_rhvae_refuses_per_dimension_step_sizes_with_one_line():
    from hf_vae import RHVAEConfig

    with pytest.raises(ConfigFieldError, match="per_dimension_step_size"):
        RHVAEConfig(backbone="mlp", latent_dim=2, per_dimension_step_size=True)


@pytest.mark.parametrize("field, value", [("num_leapfrog_steps", 0), ("leapfrog_step_size", -0.1),
                                          ("beta_zero", 1.5), ("beta_zero", 0.0), ("learn_beta_zero", "yes"),
                                          ("per_dimension_step_size", 1)])
def test_bad_fields_are_refused_with_one_line(field, value):
    with pytest.raises(ConfigFieldError, match=field):
        HVAEConfig(**{field: value})
