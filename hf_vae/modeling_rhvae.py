"""The Riemannian Hamiltonian VAE (Chadebec et al. 2020, "Geometry-Aware Hamiltonian Variational Auto-Encoder";
pythae's RHVAE).

The HVAE with a momentum on a learned metric: ρ₀ ~ N(0, G(z₀)/β₀), H(z, ρ) = −log p(x, z) + ½ log det G(z)
+ ½ ρᵀ G⁻¹(z) ρ, moved by the generalised leapfrog (hamiltonian.py) with the HVAE's tempering; G⁻¹ is the metric of
riemannian_metric.py. The flow from (z₀, γ), ρ₀ = L(z₀)γ/√β₀ with L L ᵀ = G(z₀), scales volume by det L(z₀) (the
leapfrog is symplectic when its implicit equations are solved; `num_fixed_point_iterations` steps solve them), so

    loss = −log p(x|z_K) − log p(z_K) − log N(ρ_K; 0, G(z_K)) + log q(z₀|x) + log N(γ; 0, I) − log det L(z₀)

The pass without a posterior sample is the HVAE's: the VAE's at the mode of q(z₀|x).
"""

import math

import torch

from .configuration_rhvae import RHVAEConfig
from .hamiltonian import TemperedRiemannianLeapfrog, metric_momentum_log_prob, momentum_log_prob, twice_differentiable
from .modeling_hvae import HVAEModel
from .riemannian_metric import RiemannianMetric
from .weight_init import init


class RHVAEModel(HVAEModel):
    config_class = RHVAEConfig

    def build_flow(self) -> None:
        """The generalised leapfrog's ε, β₀ and iterations, and the metric."""
        config = self.config
        self.leapfrog = TemperedRiemannianLeapfrog(
            config.num_leapfrog_steps, config.leapfrog_step_size, config.beta_zero, config.learn_leapfrog_step_size,
            config.learn_beta_zero, config.num_fixed_point_iterations)
        self.metric = RiemannianMetric(math.prod(config.data_shape), config.latent_dim, config.metric_hidden_dim,
                                       config.metric_temperature, config.metric_regularization, config.metric_capacity)

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, RiemannianMetric):
            module.reset_buffers(init)

    def flow_metric(self, pixel_values, posterior):
        """G⁻¹ of the batch in training (c_i = μ(x_i), recorded for evaluation); the recorded one otherwise."""
        if self.training:
            return self.metric.from_batch(pixel_values, posterior.mean)
        return self.metric.stored()

    def flow(self, pixel_values, z_zero, gamma, condition, metric):
        """(z₀, γ) -> (z_K, log N(γ; 0, I) − log det L(z₀) − log N(ρ_K; 0, G(z_K)))."""
        with twice_differentiable(self.decoder, torch.is_grad_enabled()):
            z_k, rho_k, log_det_cholesky = self.leapfrog(z_zero, gamma, self.potential(pixel_values, condition),
                                                         metric)
        return z_k, momentum_log_prob(gamma, 1) - log_det_cholesky - metric_momentum_log_prob(rho_k, metric(z_k))
