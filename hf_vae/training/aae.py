"""The adversarial autoencoder's training objective (Makhzani et al. 2016, sec. 2; pythae 0.1.2's Adversarial_AE).

With z ~ q(z|x), z_p ~ p(z) = N(0, I) and D a discriminator on the latents (one logit):

    autoencoder:    s·E_q[−log p(x|z)] + λ·(−log D(z))      (the model's own loss times s, plus the adversarial term)
    discriminator:  −log D(z_p) − log(1 − D(z))             (on the detached codes)

The encoder's term is the non-saturating −log D(z) that pythae uses (Goodfellow et al. 2014, sec. 3). Both
players step at every batch, each with its own Adam (pythae's AdversarialTrainer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mlp_discriminator import MLPDiscriminator
from .objectives import DiscriminatorObjective, _refuse_adversarial_flags


class AAEObjective(DiscriminatorObjective):
    """s·reconstruction + λ·(−log D(z)) for the autoencoder's step; D's cross-entropy for its own."""

    #: Adam's defaults for both networks, as pythae's AdversarialTrainer builds them
    generator_betas = (0.9, 0.999)
    discriminator_betas = (0.9, 0.999)

    def __init__(self, model, dataset_name: str = "dataset"):
        super().__init__(model.is_conditional, dataset_name)
        config = model.config
        self.adversarial_weight = config.adversarial_loss_scale
        self.reconstruction_weight = config.reconstruction_loss_scale
        self.discriminator = MLPDiscriminator(config.latent_dim, config.discriminator_hidden_dims)

    def generator_loss(self, model, batch, step: int):
        loss, logs, output = super().generator_loss(model, batch, step)
        with self.discriminator_frozen() as discriminator:
            logits, _ = discriminator(output.latents)
        adversarial = F.softplus(-logits).mean()  # −log D(z)
        loss = self.reconstruction_weight * loss + self.adversarial_weight * adversarial
        logs.update(loss=loss.detach(), adv=adversarial.detach().float())
        return loss, logs, output

    def discriminator_loss(self, batch, output, step: int):
        latents = output.latents.detach()
        code_logits, _ = self.discriminator(latents)
        prior_logits, _ = self.discriminator(torch.randn_like(latents))
        loss = F.softplus(-prior_logits).mean() + F.softplus(code_logits).mean()
        accuracy = 0.5 * ((prior_logits > 0).float().mean() + (code_logits < 0).float().mean())
        return loss, {"d_loss": loss.detach().float(), "d_acc": accuracy.detach()}


def build_aae_objective(train_args, model, value_range, dataset_name: str, autoencoder=None):
    """The family table's factory: the adversarial autoencoder's game of `model`'s config."""
    _refuse_adversarial_flags(train_args)
    return AAEObjective(model, dataset_name)
