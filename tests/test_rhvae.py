"""The Riemannian Hamiltonian VAE (hf_vae/modeling_rhvae.py): its loss against the extended ELBO computed with the
flow's volume change from an autograd Jacobian and the momentum densities from torch.distributions; its metric kept
for evaluation and saved with the weights; its log p(x) at K = 1 the bound of the same draw."""

import math

import pytest
import torch

from hf_vae import RHVAEConfig, RHVAEModel
from hf_vae.configuration_base import ConfigFieldError

pytestmark = pytest.mark.usefixtures("one_thread")

LATENT = 2


def tiny_rhvae(**overrides):
    torch.manual_seed(0)
    fields = dict(in_channels=1, image_size=4, backbone="mlp", hidden_dims=[16], latent_dim=LATENT,
                  num_leapfrog_steps=2, leapfrog_step_size=0.1, beta_zero=0.5, metric_hidden_dim=8,
                  metric_capacity=6, num_fixed_point_iterations=40)
    fields.update(overrides)
    return RHVAEModel(RHVAEConfig(**fields)).double()


def binary_images(batch=3, seed=1):
    return (torch.rand(batch, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) > 0.5).double()


def trained_once(model, x):
    """One training forward, which records the batch's centroids and metric matrices for evaluation."""
    model.train()
    model(x, generator=torch.Generator().manual_seed(11))
    return model.eval()


def test_loss_is_the_extended_elbo_with_the_flows_jacobian_from_autograd():
    model = tiny_rhvae()
    x = binary_images()
    trained_once(model, x)
    with torch.no_grad():
        loss = model(x, generator=torch.Generator().manual_seed(7)).loss
        generator = torch.Generator().manual_seed(7)
        mean, logvar = model.encoder(x, None).chunk(2, dim=1)
        std = (0.5 * logvar).exp()
        z0 = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        gamma = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    metric = model.metric.stored()
    terms = []
    for i in range(x.shape[0]):
        potential = model.potential(x[i:i + 1], None)

        def flow(state):
            z_k, rho_k, _ = model.leapfrog(state[None, :LATENT], state[None, LATENT:], potential, metric)
            return torch.cat([z_k[0], rho_k[0]])

        state = torch.cat([z0[i], gamma[i]])
        end = flow(state).detach()
        log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(flow, state)).logabsdet
        z_k, rho_k = end[None, :LATENT], end[None, LATENT:]
        with torch.no_grad():
            g_k = torch.linalg.inv(metric(z_k))[0]
            log_px = torch.distributions.Bernoulli(logits=model.decoder(z_k, None)).log_prob(x[i:i + 1]).sum()
            normal = torch.distributions.Normal(torch.zeros(LATENT, dtype=torch.float64), 1.0)
            momentum = torch.distributions.MultivariateNormal(torch.zeros(LATENT, dtype=torch.float64), g_k)
            log_target = log_px + normal.log_prob(z_k[0]).sum() + momentum.log_prob(rho_k[0])
            log_proposal = (torch.distributions.Normal(mean[i], std[i]).log_prob(z0[i]).sum()
                            + normal.log_prob(gamma[i]).sum() - log_det)
        terms.append(log_proposal - log_target)
    assert math.isclose(loss.item(), torch.stack(terms).mean().item(), rel_tol=1e-7)


def test_the_metric_of_evaluation_is_the_last_training_batchs_and_is_saved(tmp_path):
    model = tiny_rhvae()
    x = binary_images()
    trained_once(model, x)
    with torch.no_grad():
        means = model.encoder(x, None).chunk(2, dim=1)[0]
        factors = model.metric.factors(x)
        z = torch.randn(5, LATENT, dtype=torch.float64)
        weights = torch.exp(-torch.cdist(z, means) ** 2 / model.config.metric_temperature ** 2)
        expected = (torch.einsum("bn,nij->bij", weights, factors @ factors.transpose(-1, -2))
                    + model.config.metric_regularization * torch.eye(LATENT, dtype=torch.float64))
        torch.testing.assert_close(model.metric.stored()(z), expected)
    model.save_pretrained(tmp_path)
    loaded = RHVAEModel.from_pretrained(tmp_path).double()
    with torch.no_grad():
        torch.testing.assert_close(loaded.metric.stored()(z), expected)


def test_the_metric_keeps_the_latest_centroids_when_full():
    model = tiny_rhvae(metric_capacity=4)
    for batch in range(3):  # 9 centroids into a ring of 4: the last 4 are kept
        centroids = torch.full((3, LATENT), float(batch * 3), dtype=torch.float64) + torch.arange(3.0)[:, None]
        model.metric.record(centroids, torch.eye(LATENT, dtype=torch.float64).expand(3, LATENT, LATENT))
    assert sorted(model.metric.centroids[:, 0].tolist()) == [5.0, 6.0, 7.0, 8.0]


def test_log_likelihood_with_one_sample_is_minus_the_loss_of_the_same_draw():
    model = tiny_rhvae(num_fixed_point_iterations=3)
    x = binary_images()
    trained_once(model, x)
    for seed in range(2):
        with torch.no_grad():
            loss = model(x, generator=torch.Generator().manual_seed(seed)).loss
        estimate = model.log_likelihood(x, num_samples=1, generator=torch.Generator().manual_seed(seed))
        assert math.isclose(estimate.mean().item(), -loss.item(), rel_tol=1e-9)
    more = torch.stack([model.log_likelihood(x, num_samples=50, generator=torch.Generator().manual_seed(s))
                        for s in range(3)]).mean(0)
    one = torch.stack([model.log_likelihood(x, num_samples=1, generator=torch.Generator().manual_seed(s))
                       for s in range(30)]).mean(0)
    assert (one < more).all()


@pytest.mark.parametrize("field, value", [("metric_temperature", 0.0), ("metric_regularization", -1.0),
                                          ("metric_capacity", 0), ("num_fixed_point_iterations", 0)])
def test_bad_fields_are_refused_with_one_line(field, value):
    with pytest.raises(ConfigFieldError, match=field):
        RHVAEConfig(**{field: value})


def test_a_spatial_latent_is_refused():
    with pytest.raises(ConfigFieldError, match="vector latent"):
        RHVAEConfig(backbone="conv", latent_dim=None)
