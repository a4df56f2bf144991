"""Configuration of the regularised autoencoder (Ghosh et al. 2020)."""

from .configuration_base import AutoencoderConfig, _check, check_real

DECODER_REGULARISERS = ("l2", "gradient_penalty", "none")


class RAEConfig(AutoencoderConfig):
    r"""A deterministic autoencoder with a penalty on the codes and a smoothness regulariser on the decoder.

    Args:
        latent_weight (`float`, defaults to 1e-4): β, the weight of ½‖z‖² per example (Ghosh et al.'s L_Z).
        decoder_regulariser (`str`, defaults to "l2"): "l2" (‖θ_D‖², RAE-L2), "gradient_penalty"
            (‖∇_z D(z)‖², RAE-GP) or "none" (RAE with only the code penalty).
        decoder_weight (`float`, defaults to 1e-7): λ, the weight of the decoder regulariser.
        latent_density_components (`int`, defaults to 10): components of the ex-post Gaussian mixture the trainer
            fits to the training codes after training, which `generate` samples from (0: none, N(0, I) is used).
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "rae"

    def __init__(self, latent_weight: float = 1e-4, decoder_regulariser: str = "l2", decoder_weight: float = 1e-7,
                 latent_density_components: int = 10, **kwargs):
        self.latent_weight = latent_weight
        self.decoder_regulariser = decoder_regulariser
        self.decoder_weight = decoder_weight
        self.latent_density_components = latent_density_components
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("latent_weight", self.latent_weight, low=0)
        check_real("decoder_weight", self.decoder_weight, low=0)
        _check(self.decoder_regulariser in DECODER_REGULARISERS,
               f"Expected `decoder_regulariser` in {DECODER_REGULARISERS}, got {self.decoder_regulariser!r}.")
        _check(isinstance(self.latent_density_components, int) and self.latent_density_components >= 0,
               f"Expected a non-negative int `latent_density_components`, got {self.latent_density_components!r}.")
