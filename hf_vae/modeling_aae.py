"""The adversarial autoencoder (Makhzani et al. 2016, "Adversarial Autoencoders"; pythae's Adversarial_AE).

The encoder q(z|x) (a Gaussian) and the decoder are trained on the reconstruction term; the aggregate code
distribution q(z) is matched to p(z) = N(0, I) by a GAN game on the latents instead of a KL term (their sec. 2):

    autoencoder:    s·E_q[−log p(x|z)] + λ·(−log D(z)),   z ~ q(z|x)
    discriminator:  −log D(z_p) − log(1 − D(z)),           z_p ~ p(z)

D is a second network with its own optimiser that only shapes the loss, so it belongs to the training loop, not to
the published model: `hf_vae.training.aae.AAEObjective` trains it through the trainer's discriminator machinery
(checkpointed with the run) and adds λ·(−log D(z)). This model's own regulariser is zero: `model(...)` returns the
reconstruction term (and reports KL(q(z|x) ‖ p(z)) as `kl`, untrained, for the negative ELBO of evaluation), which is what a trainer without that objective (transformers' `Trainer`) minimises, a plain
autoencoder. `generate` decodes draws of p(z), which the trained code distribution matches.
"""

from typing import Dict, Tuple

import torch

from .configuration_aae import AAEConfig
from .modeling_vae import VAEModel


class AAEModel(VAEModel):
    config_class = AAEConfig
    #: its discriminator reads one vector latent
    supports_local_latent = False

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # The adversarial term lives in the objective (it needs the discriminator). KL(q(z|x) ‖ p(z)) is reported,
        # not trained: with the reconstruction term it is the negative ELBO that evaluation reports.
        kl = self.kl_divergence(posterior, latents)
        return latents.new_zeros(latents.shape[:-len(self.latent_shape)]), {"kl": kl.mean().detach()}
