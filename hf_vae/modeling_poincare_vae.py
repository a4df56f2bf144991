"""The Poincaré VAE (Mathieu et al. 2019, "Continuous Hierarchical Representations with Poincaré Variational
Auto-Encoders"), as pythae's PoincareVAE with wrapped normal posterior and prior.

    q(z|x) = WN(exp_0(h(x)), diag σ²(x)),  p(z) = WN(0, σ_p² I)  on the ball of curvature −c,
    loss = E_q[−log p(x|z)] + log q(z|x) − log p(z)    (the KL's one-sample estimate at the drawn z)

Two pieces of the skeleton change: `posterior` (the encoder's 2d outputs are a tangent vector h at the origin,
mapped onto the ball, and the log-variance of the tangent Gaussian) and `latent_prior` (poincare.py's wrapped
normal at the origin, whose `kl` is the estimate above). Both densities are with respect to the ball's Riemannian
volume, so the importance-sampled log p(x) of the base is honest. The decoder reads z in the ball's coordinates.
"""

import torch

from .configuration_poincare_vae import PoincareVAEConfig
from .modeling_base import AutoencoderPreTrainedModel
from .poincare import WrappedNormal, WrappedNormalPrior


class PoincareVAEModel(AutoencoderPreTrainedModel):
    config_class = PoincareVAEConfig

    def __init__(self, config: PoincareVAEConfig):
        super().__init__(config)
        self.encoder, self.decoder = self.build_backbone(2 * config.latent_dim)  # tangent vector, log-variance
        self.likelihood = self.build_likelihood()
        self.post_init()

    def posterior(self, encoder_output: torch.Tensor) -> WrappedNormal:
        return WrappedNormal.from_parameters(encoder_output, self.config.curvature)

    @property
    def latent_prior(self) -> WrappedNormalPrior:
        return WrappedNormalPrior(self.config.latent_dim, self.config.prior_scale, self.config.curvature)
