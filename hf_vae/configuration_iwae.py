"""Configuration of the importance-weighted autoencoder (Burda et al. 2016)."""

from .configuration_base import AutoencoderConfig, check_positive_int


class IWAEConfig(AutoencoderConfig):
    r"""A VAE trained on the K-sample importance-weighted bound instead of the ELBO.

    Args:
        num_importance_samples (`int`, defaults to 5): K, the posterior samples per example in the bound
            log (1/K) Σ_k p(x, z_k) / q(z_k|x). K = 1 is the ELBO (with a one-sample KL estimate).
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "iwae"

    def __init__(self, num_importance_samples: int = 5, **kwargs):
        self.num_importance_samples = num_importance_samples
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_positive_int("num_importance_samples", self.num_importance_samples)
