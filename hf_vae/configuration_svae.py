"""Configuration of the hyperspherical VAE (Davidson et al. 2018)."""

from .configuration_base import AutoencoderConfig, _check, check_vector_latent


class SVAEConfig(AutoencoderConfig):
    r"""A VAE whose latent lives on the unit sphere S^{latent_dim−1} ⊂ R^latent_dim: a von Mises–Fisher posterior
    and the uniform prior on the sphere.

    The loss is the negative ELBO in nats per example. All fields are those of [`AutoencoderConfig`]; the latent
    must be a vector (backbone "mlp" or "burgess", or a `latent_dim` with "conv") of at least 2 dimensions (the
    sphere S¹ is the smallest), without a local latent.

    Example:
        >>> from hf_vae import SVAEConfig, SVAEModel
        >>> model = SVAEModel(SVAEConfig(in_channels=1, image_size=28, latent_dim=16))
    """

    model_type = "svae"

    # An explicit __init__ keeps this a plain class in transformers >= 5 (see VAEConfig).
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_vector_latent(self, "points on the sphere")
        _check(self.latent_dim >= 2, f"Expected latent_dim >= 2 for a latent on the sphere S^(latent_dim-1), got "
                                     f"{self.latent_dim}.")
