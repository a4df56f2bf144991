"""Configuration of the combination importance-weighted autoencoder (Rainforth et al. 2018)."""

from .configuration_base import check_real
from .configuration_iwae import IWAEConfig


class CIWAEConfig(IWAEConfig):
    r"""A VAE trained on a convex combination of the ELBO and the K-sample importance-weighted bound.

    Args:
        elbo_weight (`float`, defaults to 0.5): β in β·ELBO + (1 − β)·L_K (Rainforth et al. 2018, eq. 6):
            1 is the VAE, 0 the IWAE.
        num_importance_samples (`int`, defaults to 5): K, the posterior samples per example in both bounds.
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "ciwae"

    def __init__(self, elbo_weight: float = 0.5, **kwargs):
        self.elbo_weight = elbo_weight
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("elbo_weight", self.elbo_weight, low=0, high=1)
