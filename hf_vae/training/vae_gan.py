"""The VAE-GAN's training objective (Larsen et al. 2016, Alg. 1, with pythae 0.1.2's VAEGAN losses and defaults).

Per batch, with x̃ = Dec(z), z ~ q(z|x), x_p = Dec(z_p), z_p ~ N(0, I), D the discriminator (one logit) and D_l its
layer-l features:

    L_feature = ½ ‖D_l(x) − D_l(x̃)‖²                                 (Larsen eq. 7: a Gaussian in D's features)
    L_GAN     = −log D(x) − log(1 − D(x_p))                          (pythae: real images against prior samples)
    encoder:        KL + L_feature
    decoder:        (1 − γ)·L_feature − γ·L_GAN                       (γ = adversarial_loss_scale)
    discriminator:  L_GAN

The trainer steps one Adam for the encoder and decoder together. The generator loss below,

    KL + L_feature + γ/(1 − γ) · log(1 − D(x_p)),

gives the encoder the gradient of its loss and the decoder the gradient of its loss divided by (1 − γ) (KL does
not reach the decoder, L_GAN's prior term does not reach the encoder). Adam's step is invariant to a constant
positive factor on a parameter's gradient, so this is the two-optimiser update of pythae's intended losses.

Equilibrium (Larsen sec. 4, as in pythae): with the discriminator's two cross-entropies −log D(x) and
−log(1 − D(x_p)), the discriminator pauses while either is below equilibrium − margin, the decoder's GAN term while
either is above equilibrium + margin, and both play when both would pause. The decoder's switch applies at once;
the discriminator's at the next step (the trainer decides whether to step it before the batch is seen).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .mlp_discriminator import MLPDiscriminator
from .objectives import DiscriminatorObjective, _inputs, _refuse_adversarial_flags


def players_on(real_cost: float, fake_cost: float, equilibrium: float, margin: float) -> Tuple[bool, bool]:
    """(decoder's GAN term on, discriminator on) from D's cross-entropies on real and prior images (pythae's
    VAEGAN.loss_function)."""
    discriminator = not (real_cost < equilibrium - margin or fake_cost < equilibrium - margin)
    decoder = not (real_cost > equilibrium + margin or fake_cost > equilibrium + margin)
    if not decoder and not discriminator:
        return True, True
    return decoder, discriminator


def _across_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean over processes, so that every process takes the same switches (and steps D together)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


class VAEGANObjective(DiscriminatorObjective):
    """KL + feature reconstruction + the decoder's GAN term; D's cross-entropy for its step (module docstring)."""

    #: Adam's defaults for all three networks, as pythae's CoupledOptimizerAdversarialTrainer builds them
    generator_betas = (0.9, 0.999)
    discriminator_betas = (0.9, 0.999)

    def __init__(self, model, dataset_name: str = "dataset"):
        super().__init__(model.is_conditional, dataset_name)
        config = model.config
        self.layer = config.reconstruction_layer
        self.gan_weight = config.adversarial_loss_scale / (1 - config.adversarial_loss_scale)
        self.equilibrium, self.margin = config.equilibrium, config.margin
        in_features = 1
        for size in config.data_shape:
            in_features *= size
        self.discriminator = MLPDiscriminator(in_features, config.discriminator_hidden_dims)
        self.discriminator_due = True  # D steps at the first step; then as the equilibrium says
        self.prior_images = None  # x_p of the last generator step, detached, for D's step

    def discriminator_active(self, step: int) -> bool:
        return self.discriminator_due

    def generator_loss(self, model, batch, step: int):
        unwrapped = getattr(model, "module", model)
        pixel_values, labels = _inputs(batch, self.is_conditional, self.dataset_name)
        output = model(pixel_values, labels=labels, sample_posterior=True)
        # x_p: decoded in the same graph as the loss, so DDP all-reduces the decoder's summed gradient once.
        prior_latents = unwrapped.sample_prior(pixel_values.shape[0])
        prior_images = unwrapped.likelihood.mean(unwrapped._decode(prior_latents, None))
        with self.discriminator_frozen() as discriminator:
            with torch.no_grad():
                real_logits, real_features = discriminator(pixel_values, self.layer)
            _, reconstructed_features = discriminator(output.reconstruction, self.layer)
            prior_logits, _ = discriminator(prior_images)
        feature = 0.5 * (real_features - reconstructed_features).pow(2).sum(-1).mean()
        costs = _across_processes(torch.stack([F.softplus(-real_logits).mean(),
                                               F.softplus(prior_logits).mean()]).detach().float())
        real_cost, fake_cost = costs.tolist()  # one host sync: the switches decide what the step does
        decoder_on, self.discriminator_due = players_on(real_cost, fake_cost, self.equilibrium, self.margin)
        # −log(1 − D(x_p)) = softplus(logit): the decoder maximises it (minimises −γ·L_GAN's prior term).
        gan = -F.softplus(prior_logits).mean()
        loss = output.kl + feature + (self.gan_weight * gan if decoder_on else 0.0)
        self.prior_images = prior_images.detach()
        logs = {"loss": loss.detach(), "rec": feature.detach().float(), "kl": output.kl.detach().float(),
                "pixel_rec": output.reconstruction_loss.detach().float(), "d_real": costs[0],
                "d_fake": costs[1], "gan_on": costs.new_tensor(float(decoder_on))}
        return loss, logs, output

    def discriminator_loss(self, batch, output, step: int):
        real_logits, _ = self.discriminator(batch["pixel_values"])
        prior_logits, _ = self.discriminator(self.prior_images)
        loss = F.softplus(-real_logits).mean() + F.softplus(prior_logits).mean()
        accuracy = 0.5 * ((real_logits > 0).float().mean() + (prior_logits < 0).float().mean())
        return loss, {"d_loss": loss.detach().float(), "d_acc": accuracy.detach()}

    def state_dict(self) -> Dict:
        return {**super().state_dict(), "discriminator_due": self.discriminator_due}

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self.discriminator_due = bool(state["discriminator_due"])


def build_vae_gan_objective(train_args, model, value_range, dataset_name: str, autoencoder=None):
    """The family table's factory: the VAE-GAN game of `model`'s config."""
    _refuse_adversarial_flags(train_args)
    return VAEGANObjective(model, dataset_name)
