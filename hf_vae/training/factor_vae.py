"""The FactorVAE's training objective: the VAE loss + γ·TC, with the total correlation estimated by a latent
discriminator that the trainer trains alongside (its own optimiser, checkpointed, not published).

Kim & Mnih (2018), Algorithm 2: the discriminator D(z) → (logit "from q(z)", logit "from Π_j q(z_j)") learns from
the batch's latents (detached) against the same latents with every dimension shuffled independently across the
batch; the VAE minimises γ·E[logit_q − logit_Π] = γ·E[log D(z)/(1 − D(z))] ≈ γ·TC. (The paper draws the shuffled
samples from a second batch; one batch, shuffled, is the common simplification and changes no expectation.)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .objectives import DiscriminatorObjective


class LatentDiscriminator(nn.Module):
    """MLP (latent_dim) -> hidden (LeakyReLU 0.2) -> 2 logits: [from q(z), from Π_j q(z_j)]."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int] = (1000,) * 6):
        super().__init__()
        layers, width = [], latent_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def permute_dims(latents: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, D) -> (B, D) with each column shuffled independently: samples of Π_j q(z_j) (Kim & Mnih, Alg. 1)."""
    noise = torch.rand(latents.shape, generator=generator, device=latents.device)
    return torch.gather(latents, 0, noise.argsort(dim=0))


class FactorVAEObjective(DiscriminatorObjective):
    """VAE loss + γ·TC for the generator step; cross-entropy of the latent discriminator for its step."""

    #: Adam's betas for the VAE (Kim & Mnih, app. A); the discriminator gets the trainer's GAN default (0.5, 0.9)
    generator_betas = (0.9, 0.999)

    def __init__(self, model, dataset_name: str = "dataset"):
        super().__init__(model.is_conditional, dataset_name)
        config = model.config
        self.gamma = config.gamma
        self.discriminator = LatentDiscriminator(config.latent_dim, config.discriminator_hidden_dims)

    # D and the VAE are updated at every step (Kim & Mnih, Alg. 2): the base's `discriminator_active`

    def total_correlation(self, latents: torch.Tensor) -> torch.Tensor:
        """E_q(z)[log D(z) / (1 − D(z))], the density-ratio estimate of KL(q(z) ‖ Π_j q(z_j)) (eq. 3)."""
        logits = self.discriminator(latents)
        return (logits[:, 0] - logits[:, 1]).mean()

    def generator_loss(self, model, batch, step: int):
        loss, logs, output = super().generator_loss(model, batch, step)
        with self.discriminator_frozen():
            tc = self.total_correlation(output.latents)
        loss = loss + self.gamma * tc
        logs.update(loss=loss.detach(), tc=tc.detach())
        return loss, logs, output

    def discriminator_loss(self, batch, output, step: int):
        latents = output.latents.detach()
        logits_q = self.discriminator(latents)
        logits_product = self.discriminator(permute_dims(latents))
        from_q = torch.zeros(len(latents), dtype=torch.long, device=latents.device)
        loss = 0.5 * (F.cross_entropy(logits_q, from_q) + F.cross_entropy(logits_product, 1 - from_q))
        accuracy = 0.5 * ((logits_q.argmax(1) == 0).float().mean() + (logits_product.argmax(1) == 1).float().mean())
        return loss, {"d_loss": loss.detach().float(), "d_acc": accuracy.detach()}



def build_factor_vae_objective(train_args, model, value_range, dataset_name: str, autoencoder=None):
    """The family table's factory: the VAE loss + γ·TC of `model`'s config."""
    return FactorVAEObjective(model, dataset_name)
