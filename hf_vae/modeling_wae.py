"""The Wasserstein autoencoder with the MMD penalty (Tolstikhin et al. 2018, "Wasserstein Auto-Encoders").

A deterministic encoder z = E(x); the regulariser pulls the aggregate posterior q(z) towards p(z) = N(0, I)
instead of each q(z|x), so codes of different inputs need not overlap (Tolstikhin et al., eq. 4):

    loss = c(x, D(E(x))) + λ·MMD²(q(z), p(z))

with the likelihood's −log p(x|z) as the cost c (the squared error for a Gaussian decoder, up to constants).
The MMD is a term of the whole batch (`batch_regularisation`); the per-example regulariser is 0. `generate`
decodes z ~ N(0, I), or samples of an ex-post mixture (`fit_latent_density`).
"""

from typing import Dict, Tuple

import torch

from .configuration_wae import WAEConfig
from .deterministic import DeterministicAutoencoderModel
from .mmd import PriorMMDMixin, PriorReferenceDraws, prior_mmd


class WAEModel(PriorMMDMixin, DeterministicAutoencoderModel):
    config_class = WAEConfig

    def __init__(self, config: WAEConfig):
        super().__init__(config)
        self.prior_reference = PriorReferenceDraws(self.latent_shape)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return latents.new_zeros(latents.shape[0]), {}

    def batch_regularisation(self, posterior, latents, params, generator=None):
        mmd = prior_mmd(self, latents, generator)
        return self.config.mmd_weight * mmd, {"mmd": mmd.detach()}
