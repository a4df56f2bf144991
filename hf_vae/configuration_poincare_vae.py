"""Configuration of the Poincaré VAE (Mathieu et al. 2019)."""

from .configuration_base import AutoencoderConfig, check_real, check_vector_latent


class PoincareVAEConfig(AutoencoderConfig):
    r"""A VAE whose latent lives on the Poincaré ball of curvature −`curvature`: a wrapped normal posterior and a
    wrapped normal prior centred at the origin.

    The loss is the negative ELBO in nats per example, its KL estimated at the posterior sample (it has no closed
    form on the ball).

    Args:
        curvature (`float`, defaults to 1.0): c > 0; the ball {z : c‖z‖² < 1} has constant curvature −c and radius
            1/√c. Small c flattens it towards the Euclidean VAE.
        prior_scale (`float`, defaults to 1.0): σ_p of the prior WN(0, σ_p² I), the standard deviation of its
            tangent Gaussian (the geodesic distance of a prior draw from the origin is its norm).
        Other fields are those of [`AutoencoderConfig`]; the latent must be a vector (backbone "mlp" or "burgess",
        or a `latent_dim` with "conv"), without a local latent.

    Example:
        >>> from hf_vae import PoincareVAEConfig, PoincareVAEModel
        >>> model = PoincareVAEModel(PoincareVAEConfig(in_channels=1, image_size=28, latent_dim=2, curvature=0.7))
    """

    model_type = "poincare_vae"

    def __init__(self, curvature: float = 1.0, prior_scale: float = 1.0, **kwargs):
        self.curvature = curvature
        self.prior_scale = prior_scale
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("curvature", self.curvature, low=0, low_open=True)
        check_real("prior_scale", self.prior_scale, low=0, low_open=True)
        check_vector_latent(self, "points on the ball")
