"""The plain deterministic autoencoder: the skeleton with a point-mass posterior and no regulariser.

    loss = −log p(x | D(E(x)))

Nothing shapes the code space, so `generate` samples the Gaussian mixture the trainer fits to the training codes
after training (`fit_latent_density`, as for the RAE); until then it draws from N(0, I).
"""

from typing import Dict, Tuple

import torch

from .configuration_ae import AEConfig
from .deterministic import DeterministicAutoencoderModel


class AEModel(DeterministicAutoencoderModel):
    config_class = AEConfig

    def __init__(self, config: AEConfig):
        super().__init__(config)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return latents.new_zeros(latents.shape[:-len(self.latent_shape)]), {}
