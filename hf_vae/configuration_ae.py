"""Configuration of the plain deterministic autoencoder, the baseline every comparison needs."""

from .configuration_base import AutoencoderConfig, _check


class AEConfig(AutoencoderConfig):
    r"""A deterministic autoencoder trained on the reconstruction term alone: z = E(x), loss = −log p(x | D(z)).

    It is pythae's `AE` and the reference point of the regularised families: the RAE adds penalties to it, the
    WAE an MMD term, the VAE a noisy encoder and a KL term.

    Args:
        latent_density_components (`int`, defaults to 10): components of the ex-post Gaussian mixture the trainer
            fits to the training codes after training, which `generate` samples from (0: none, N(0, I) is used,
            which an unregularised code space does not follow).
        Other fields are those of [`AutoencoderConfig`].

    Example:
        >>> from hf_vae import AEConfig, AEModel
        >>> model = AEModel(AEConfig(in_channels=1, image_size=28, latent_dim=16))
    """

    model_type = "ae"

    def __init__(self, latent_density_components: int = 10, **kwargs):
        self.latent_density_components = latent_density_components
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        _check(isinstance(self.latent_density_components, int) and not isinstance(self.latent_density_components, bool)
               and self.latent_density_components >= 0,
               f"Expected a non-negative int `latent_density_components`, got {self.latent_density_components!r}.")
