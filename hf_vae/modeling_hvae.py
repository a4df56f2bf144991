"""The Hamiltonian VAE (Caterini et al. 2018, "Hamiltonian Variational Auto-Encoder"; pythae's HVAE).

z₀ ~ q(z|x) = N(μ(x), diag σ²(x)) and a momentum ρ₀ = γ/√β₀, γ ~ N(0, I), are moved by K tempered leapfrog steps
on H(z, ρ) = −log p(x, z) + ½‖ρ‖² (hamiltonian.py). The flow reads x through the decoder, so it is the
`refine_latents` hook; the decoder sees z_K and the loss is minus the ELBO over the extended space (their eq. 21):

    loss = −log p(x|z_K) − log p(z_K) − log N(ρ_K; 0, I) + log q(z₀|x) + log N(γ; 0, I)

A pass without a posterior sample (`sample_posterior=False`, an eval-mode forward without a generator) decodes the
mode of q(z₀|x) and reports its KL, as `reconstruct` and `encode` do: q(z_K|x) has no closed-form mode, and the
flow moves the draws of the sampled objective.
"""

import math
from typing import Optional

import torch

from .configuration_hvae import HVAEConfig
from .hamiltonian import (HamiltonianPosterior, TemperedLeapfrog, draw_momentum_noise, momentum_log_prob,
                          twice_differentiable)
from .modeling_base import AutoencoderPreTrainedModel
from .weight_init import init


class HVAEModel(AutoencoderPreTrainedModel):
    config_class = HVAEConfig

    def __init__(self, config: HVAEConfig):
        super().__init__(config)
        encoder_out = 2 * (config.latent_dim if config.vector_latent else config.latent_channels)
        self.encoder, self.decoder = self.build_backbone(encoder_out)
        self.likelihood = self.build_likelihood()
        self.build_flow()
        self.post_init()

    def build_flow(self) -> None:
        """The flow's modules: the tempered leapfrog's ε (one, or one per latent element) and β₀."""
        config = self.config
        self.leapfrog = TemperedLeapfrog(config.num_leapfrog_steps, config.leapfrog_step_size, config.beta_zero,
                                         config.learn_leapfrog_step_size, config.learn_beta_zero,
                                         self.latent_shape if config.per_dimension_step_size else ())

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, TemperedLeapfrog):
            module.reset_parameters(init)

    def potential(self, pixel_values: torch.Tensor, condition: Optional[torch.Tensor]):
        """U(z) = −log p(x, z) = −log p(x|z) − log p(z), per example: the Hamiltonian's potential energy."""
        return lambda z: self.likelihood(pixel_values, self._decode(z, condition)) - self.prior_log_prob(z)

    def flow_metric(self, pixel_values, posterior):
        """What the flow's momentum depends on besides z: nothing here (the RHVAE's learned metric)."""
        return None

    def flow(self, pixel_values, z_zero, gamma, condition, metric):
        """(z₀, γ) -> (z_K, log N(γ; 0, I) − log N(ρ_K; 0, I)): the end point and what the momentum adds to the
        effective log-density of z_K (HamiltonianPosterior)."""
        with twice_differentiable(self.decoder, torch.is_grad_enabled()):
            z_k, rho_k = self.leapfrog(z_zero, gamma, self.potential(pixel_values, condition))
        event_dims = len(self.latent_shape)
        return z_k, momentum_log_prob(gamma, event_dims) - momentum_log_prob(rho_k, event_dims)

    def refine_latents(self, pixel_values, posterior, latents, condition, generator, sample_posterior):
        if not sample_posterior:
            return posterior, latents
        gamma, metric = draw_momentum_noise(latents, generator), self.flow_metric(pixel_values, posterior)
        z_k, momentum_terms = self.flow(pixel_values, latents, gamma, condition, metric)
        return HamiltonianPosterior(posterior, z_k, posterior.log_prob(latents) + momentum_terms), z_k

    def regularisation_loss(self, posterior, latents: torch.Tensor):
        if not isinstance(posterior, HamiltonianPosterior):  # the pass at the mode of q(z₀|x)
            return super().regularisation_loss(posterior, latents)
        # the effective log q(z_K|x) − log p(z_K): with −log p(x|z_K), minus the extended ELBO's integrand
        regulariser = posterior.log_prob(latents) - self.prior_log_prob(latents)
        return regulariser, {"kl": regulariser.mean()}

    def estimate_log_likelihood(self, pixel_values, posterior, condition, labels, num_samples, chunk_size, generator):
        """log p(x) ≈ log (1/S) Σ_s p(x, z_K) N(ρ_K; 0, I) / (q(z₀|x) N(γ; 0, I)) over S draws of (z₀, γ) pushed
        through the flow: importance sampling on the extended space, where the flow keeps volume, so the weight is
        an unbiased estimate of p(x) (eq. 21's integrand exponentiated; S = 1 is the HVAE's bound)."""
        total, metric = None, self.flow_metric(pixel_values, posterior)
        batch = pixel_values.shape[0]
        for start in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - start)
            z_zero = posterior.sample_stack(k, generator)  # (k, B, *latent_shape)
            flat = z_zero.reshape(k * batch, *self.latent_shape)
            x = pixel_values.repeat(k, *([1] * (pixel_values.dim() - 1)))
            cond = None if condition is None else condition.repeat(k, *([1] * (condition.dim() - 1)))
            z_k, momentum_terms = self.flow(x, flat, draw_momentum_noise(flat, generator), cond, metric)
            log_joint = -self.likelihood(x, self._decode(z_k, cond)) + self.prior_log_prob(z_k)
            log_weights = (log_joint - momentum_terms).view(k, batch) - posterior.log_prob(z_zero)
            chunk_total = torch.logsumexp(log_weights, dim=0)
            total = chunk_total if total is None else torch.logaddexp(total, chunk_total)
        return total - math.log(num_samples)
