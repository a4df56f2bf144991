"""Configuration of the FactorVAE (Kim & Mnih 2018)."""

from typing import Sequence

from .configuration_base import _check, check_positive_ints, check_real
from .configuration_vae import VAEConfig


class FactorVAEConfig(VAEConfig):
    r"""A VAE whose objective adds γ times the total correlation of q(z), estimated by a discriminator.

    Args:
        gamma (`float`, defaults to 10.0): weight of the total correlation term (Kim & Mnih use 10-100).
        discriminator_hidden_dims (`Sequence[int]`, defaults to six layers of 1000): hidden sizes of the MLP that
            tells samples of q(z) from samples of Π_j q(z_j) (LeakyReLU 0.2, as in the paper). The discriminator
            is trained by hf_vae's trainer and is not part of the published model.
        Other fields are those of [`AutoencoderConfig`]; the latent must be a vector (`latent_dim`).
    """

    model_type = "factor_vae"

    def __init__(self, gamma: float = 10.0, discriminator_hidden_dims: Sequence[int] = (1000, 1000, 1000, 1000, 1000, 1000), **kwargs):
        self.gamma = gamma
        self.discriminator_hidden_dims = list(discriminator_hidden_dims)
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("gamma", self.gamma, low=0)
        check_positive_ints("discriminator_hidden_dims", self.discriminator_hidden_dims)
        _check(self.vector_latent, "The FactorVAE's discriminator reads a vector latent: expected an int "
                                   "`latent_dim` (with the conv backbone, a dense bottleneck), got a spatial latent.")
