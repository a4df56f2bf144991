"""Configuration of the adversarial autoencoder (Makhzani et al. 2016; pythae's Adversarial_AE)."""

from typing import Sequence

from .configuration_base import check_positive_ints, check_real, check_vector_latent
from .configuration_vae import VAEConfig


class AAEConfig(VAEConfig):
    r"""An autoencoder whose code distribution q(z) is matched to p(z) = N(0, I) by a discriminator on the latents
    instead of a KL term (Makhzani et al. 2016, sec. 2; pythae's Adversarial_AE and its defaults).

    Args:
        adversarial_loss_scale (`float`, defaults to 0.5): weight of the encoder's adversarial term
            −log D(z), z ~ q(z|x).
        reconstruction_loss_scale (`float`, defaults to 1.0): weight of the reconstruction term −log p(x|z).
        discriminator_hidden_dims (`Sequence[int]`, defaults to (256,)): hidden sizes of the MLP that tells codes
            of the data from draws of p(z) (pythae's Discriminator_MLP: one layer of 256, ReLU).
        Other fields are those of [`AutoencoderConfig`]; the latent must be a vector (`latent_dim`). The encoder
            is a Gaussian q(z|x) (Makhzani's "Gaussian posterior" choice). The discriminator is trained by
            hf_vae's trainer and is not part of the published model; `model(...)` on its own returns the
            reconstruction term alone.
    """

    model_type = "aae"

    def __init__(self, adversarial_loss_scale: float = 0.5, reconstruction_loss_scale: float = 1.0,
                 discriminator_hidden_dims: Sequence[int] = (256,), **kwargs):
        self.adversarial_loss_scale = adversarial_loss_scale
        self.reconstruction_loss_scale = reconstruction_loss_scale
        self.discriminator_hidden_dims = list(discriminator_hidden_dims)
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("adversarial_loss_scale", self.adversarial_loss_scale, low=0)
        check_real("reconstruction_loss_scale", self.reconstruction_loss_scale, low=0)
        check_positive_ints("discriminator_hidden_dims", self.discriminator_hidden_dims, allow_empty=True)
        check_vector_latent(self, "the AAE's latent discriminator")
