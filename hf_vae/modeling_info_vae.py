"""The InfoVAE (Zhao et al. 2019, "InfoVAE: Balancing Learning and Inference in Variational Autoencoders").

The VAE's networks; the objective reweights the KL and adds a divergence between the aggregate posterior
q(z) = E_x q(z|x) and the prior, here the MMD (their "MMD-VAE"), in nats per example:

    loss = E_q[−log p(x|z)] + (1 − α)·KL(q(z|x) ‖ p(z)) + (α + λ − 1)·MMD²(q(z), p(z))      (Zhao et al., eq. 6)

The MMD compares the batch's posterior samples with as many prior samples (`hf_vae.mmd`, unbiased estimator);
it is a term of the whole batch, so it goes through the `batch_regularisation` hook.
"""

from typing import Dict, Tuple

import torch

from .configuration_info_vae import InfoVAEConfig
from .mmd import PriorMMDMixin, PriorReferenceDraws, prior_mmd
from .modeling_vae import VAEModel


class InfoVAEModel(PriorMMDMixin, VAEModel):
    config_class = InfoVAEConfig
    #: the MMD matches q(z) to a fixed prior over one vector latent
    supports_local_latent = False

    def __init__(self, config: InfoVAEConfig):
        super().__init__(config)
        self.prior_reference = PriorReferenceDraws(self.latent_shape)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        kl = posterior.kl()
        return (1.0 - self.config.alpha) * kl, {"kl": kl.mean()}

    def batch_regularisation(self, posterior, latents, params, generator=None):
        mmd = prior_mmd(self, latents, generator)
        return (self.config.alpha + self.config.mmd_lambda - 1.0) * mmd, {"mmd": mmd.detach()}
