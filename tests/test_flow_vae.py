"""VAEs with flow posteriors (flow_posterior.py): the density of z_K by the change of variables, checked with an
autograd Jacobian, and the KL estimate against the closed form where the flow is the identity."""

import pytest
import torch

from hf_vae.configuration_vae_iaf import VAEIAFConfig
from hf_vae.configuration_vae_lin_nf import VAELinNFConfig
from hf_vae.distributions import DiagonalGaussianDistribution
from hf_vae.flow_posterior import FlowPosterior
from hf_vae.flows import build_flow
from hf_vae.modeling_vae_iaf import VAEIAFModel
from hf_vae.modeling_vae_lin_nf import VAELinNFModel


def test_density_at_a_sample_is_the_change_of_variables():
    torch.manual_seed(0)
    flow = build_flow("iaf", 3, 2, hidden_dims=(8,)).double()
    with torch.no_grad():  # away from the near-identity start, within the range the Jacobian is computed exactly
        for p in flow.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    params = torch.randn(4, 6, dtype=torch.float64)
    base = DiagonalGaussianDistribution(params)
    posterior = FlowPosterior(DiagonalGaussianDistribution(params), flow)
    z_k = posterior.sample(torch.Generator().manual_seed(1))
    z_0 = base.sample(torch.Generator().manual_seed(1))
    for i in range(4):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], z_0[i])
        expected = base.log_prob(z_0)[i] - torch.linalg.slogdet(jacobian).logabsdet
        torch.testing.assert_close(posterior.log_prob(z_k)[i], expected)


def test_with_a_context_each_draw_reads_its_own_examples_context():
    """Stacked draws (K, B, D) of a posterior with a context h (B, C): draw k of example b is pushed with h_b, and
    its density is the change of variables of that flow."""
    torch.manual_seed(0)
    flow = build_flow("iaf", 3, 2, hidden_dims=(8,), context_dim=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    params, context = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    base = DiagonalGaussianDistribution(params)
    posterior = FlowPosterior(DiagonalGaussianDistribution(params), flow, context)
    z_k = posterior.sample_stack(3, torch.Generator().manual_seed(1))
    z_0 = base.sample_stack(3, torch.Generator().manual_seed(1))
    log_q = posterior.log_prob(z_k)
    for k in range(3):
        for b in range(4):
            pushed, log_det = flow(z_0[k, b][None], context[b][None])
            torch.testing.assert_close(z_k[k, b], pushed[0])
            torch.testing.assert_close(log_q[k, b], base.log_prob(z_0)[k, b] - log_det[0])


def test_vae_iaf_with_a_context_trains_and_estimates_log_likelihood():
    torch.manual_seed(0)
    model = VAEIAFModel(VAEIAFConfig(image_size=8, in_channels=1, hidden_dims=[16], latent_dim=4,
                                     flow_hidden_dims=[8], flow_context_dim=3))
    x = (torch.rand(5, 1, 8, 8) > 0.5).float()
    model(x).loss.backward()
    assert model.flow.flows[0].made.context.weight.grad.abs().sum() > 0  # h reaches the flow, and learns
    assert torch.isfinite(model.eval().log_likelihood(x, num_samples=8)).all()
    with pytest.raises(ValueError, match="flow_context_dim"):
        VAEIAFConfig(flow_context_dim=-1)


def test_with_an_identity_flow_the_kl_estimate_averages_to_the_closed_form():
    model = VAELinNFModel(VAELinNFConfig(in_channels=1, image_size=4, latent_dim=3, hidden_dims=[8], flows=["planar"]))
    with torch.no_grad():
        model.flow.flows[0].scale.zero_()
        model.flow.flows[0].weight.fill_(1.0)  # û = u + (m(wᵀu) − wᵀu)w/‖w‖² with u = 0 is not 0: make it so
    model.flow.flows[0].constrained_scale = lambda: torch.zeros(3)
    params = torch.randn(2, 6)
    posterior = model.posterior(params)
    draws = torch.stack([model.regularisation_loss(posterior, posterior.sample_stack(1))[0][0] for _ in range(4000)])
    closed_form = DiagonalGaussianDistribution(params).kl()
    torch.testing.assert_close(draws.mean(0), closed_form, atol=0.06, rtol=0.05)


def test_latents_the_posterior_did_not_draw_are_refused():
    posterior = FlowPosterior(DiagonalGaussianDistribution(torch.randn(2, 4)), build_flow("radial", 2, 1))
    posterior.sample()
    with pytest.raises(ValueError, match="Expected latents drawn from this flow posterior"):
        posterior.log_prob(torch.zeros(2, 2))


@pytest.mark.parametrize("model_class,config_class", [(VAEIAFModel, VAEIAFConfig), (VAELinNFModel, VAELinNFConfig)])
def test_flow_vaes_train_evaluate_and_need_a_vector_latent(model_class, config_class):
    torch.manual_seed(0)
    model = model_class(config_class(in_channels=1, image_size=8, latent_dim=4, hidden_dims=[16]))
    x = torch.rand(3, 1, 8, 8)
    model.train()(x).loss.backward()
    assert all(p.grad is not None for p in model.flow.parameters())
    model.eval()
    torch.testing.assert_close(model(x).loss, model(x).loss)  # eval passes are deterministic
    assert torch.isfinite(model.log_likelihood(x, num_samples=8)).all()
    with pytest.raises(ValueError, match="Expected a vector latent for the flows"):
        config_class(in_channels=1, image_size=8, backbone="conv", block_out_channels=[8, 16], norm_num_groups=4)
