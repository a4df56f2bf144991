"""Configuration of the VAE-GAN (Larsen et al. 2016; pythae's VAEGAN)."""

from typing import Sequence

from .configuration_base import _check, check_positive_int, check_positive_ints, check_real
from .configuration_vae import VAEConfig


class VAEGANConfig(VAEConfig):
    r"""A VAE whose reconstruction is measured in the features of a discriminator, which also plays a GAN game with
    the decoder (Larsen et al. 2016, Alg. 1; pythae's VAEGAN and its defaults).

    Args:
        adversarial_loss_scale (`float`, defaults to 0.5): γ of pythae's decoder loss
            (1 − γ)·L_feature − γ·L_GAN; in [0, 1). The encoder minimises KL + L_feature.
        reconstruction_layer (`int`, defaults to 1): the discriminator layer, numbered from 1, whose outputs the
            feature reconstruction compares (Larsen's l). len(discriminator_hidden_dims) + 1 is the output
            probability (pythae's default, −1, means that one).
        discriminator_hidden_dims (`Sequence[int]`, defaults to (256,)): hidden sizes of the MLP discriminator on
            the flattened image (pythae's Discriminator_MLP: one layer of 256, ReLU).
        equilibrium (`float`, defaults to 0.68): centre of the band of the discriminator's two cross-entropies
            (real images, decoded prior samples) inside which both players learn.
        margin (`float`, defaults to 0.4): half-width of that band: below equilibrium − margin the discriminator
            pauses, above equilibrium + margin the decoder's GAN term does.
        Other fields are those of [`AutoencoderConfig`]. The discriminator is trained by hf_vae's trainer and is
            not part of the published model; `model(...)` on its own returns the VAE's negative ELBO.
    """

    model_type = "vae_gan"

    def __init__(self, adversarial_loss_scale: float = 0.5, reconstruction_layer: int = 1,
                 discriminator_hidden_dims: Sequence[int] = (256,), equilibrium: float = 0.68, margin: float = 0.4,
                 **kwargs):
        self.adversarial_loss_scale = adversarial_loss_scale
        self.reconstruction_layer = reconstruction_layer
        self.discriminator_hidden_dims = list(discriminator_hidden_dims)
        self.equilibrium = equilibrium
        self.margin = margin
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("adversarial_loss_scale", self.adversarial_loss_scale, low=0, high=1, high_open=True)
        check_positive_ints("discriminator_hidden_dims", self.discriminator_hidden_dims, allow_empty=True)
        check_positive_int("reconstruction_layer", self.reconstruction_layer)
        depth = len(self.discriminator_hidden_dims) + 1
        _check(self.reconstruction_layer <= depth,
               f"Expected `reconstruction_layer` in 1 … {depth} (the discriminator's layers: "
               f"{len(self.discriminator_hidden_dims)} hidden, then its output), got {self.reconstruction_layer}.")
        check_real("equilibrium", self.equilibrium, low=0)
        check_real("margin", self.margin, low=0)
