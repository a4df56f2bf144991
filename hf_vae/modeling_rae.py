"""The regularised autoencoder (Ghosh et al. 2020, "From Variational to Deterministic Autoencoders").

A deterministic encoder z = E(x) replaces the VAE's noise with explicit regularisers (their eq. 11):

    loss = −log p(x|D(z)) + β·½‖z‖² + λ·R(D)

    R = ‖θ_D‖²             RAE-L2: weight decay on the decoder
    R = ‖∇_z D(z)‖²        RAE-GP: the decoder's gradient at the codes (the gradient of the summed output, as in
                            the authors' code), averaged over the batch

β·½‖z‖² is the per-example `regularisation_loss`; R goes through the `batch_regularisation` hook (it needs the
decoder and its output). There is no prior to sample from: after training, a Gaussian mixture is fitted to the
training codes (`fit_latent_density`, their sec. 4 "ex-post density estimation"; the trainer does it) and
`generate` samples from it. Until then the mixture is N(0, I).
"""

from typing import Dict, Tuple

import torch

from .configuration_rae import RAEConfig
from .deterministic import DeterministicAutoencoderModel
from .modeling_outputs import onloaded


class RAEModel(DeterministicAutoencoderModel):
    config_class = RAEConfig

    def __init__(self, config: RAEConfig):
        super().__init__(config)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return self.config.latent_weight * 0.5 * latents.flatten(1).pow(2).sum(1), {}

    def batch_regularisation(self, posterior, latents, params, generator=None):
        config = self.config
        if config.decoder_regulariser == "none" or config.decoder_weight == 0:
            return None, {}
        if config.decoder_regulariser == "l2":
            with onloaded(self.decoder):  # the weights are read, not the module called: bring in offloaded ones
                penalty = sum(p.pow(2).sum() for p in self.decoder.parameters())
        else:
            if not (torch.is_grad_enabled() and latents.requires_grad):
                return None, {}  # evaluation without a graph: the penalty is a training term only
            (grad,) = torch.autograd.grad(params.sum(), latents, create_graph=True)
            penalty = grad.flatten(1).pow(2).sum(1).mean()
        return config.decoder_weight * penalty, {}
