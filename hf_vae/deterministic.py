"""The skeleton of the deterministic autoencoders (WAE, RAE): an encoder that outputs the code z = E(x) itself.

The posterior is a point mass at E(x) (`point_mass`: sample = mode = mean, no density), so the model has no ELBO
or importance-sampled likelihood (`deterministic_encoder`), and its regularisers are terms of its own.
"""

import torch

from .distributions import point_mass
from .modeling_base import AutoencoderPreTrainedModel


class DeterministicAutoencoderModel(AutoencoderPreTrainedModel):
    #: no posterior density: no ELBO or importance-sampled likelihood
    deterministic_encoder = True

    def __init__(self, config):
        super().__init__(config)
        encoder_out = config.latent_dim if config.vector_latent else config.latent_channels
        self.encoder, self.decoder = self.build_backbone(encoder_out)
        self.likelihood = self.build_likelihood()
        self.post_init()

    def posterior(self, encoder_output: torch.Tensor):
        return point_mass(encoder_output)
