"""Configuration of the multiply importance-weighted autoencoder (Rainforth et al. 2018)."""

from .configuration_base import check_positive_int
from .configuration_iwae import IWAEConfig


class MIWAEConfig(IWAEConfig):
    r"""An IWAE whose objective is the average of M independent K-sample bounds (M×K posterior samples).

    Args:
        num_bounds (`int`, defaults to 8): M, the independent importance-weighted bounds averaged per example.
        num_importance_samples (`int`, defaults to 8): K, the samples inside each bound.
        Other fields are those of [`AutoencoderConfig`].

    Rainforth et al. (2018) show that the inference network's gradient signal-to-noise ratio decays as
    O(1/√K) with K, while averaging M bounds restores it; M = 1 is the IWAE, K = 1 the M-sample ELBO.
    """

    model_type = "miwae"

    def __init__(self, num_bounds: int = 8, num_importance_samples: int = 8, **kwargs):
        self.num_bounds = num_bounds
        super().__init__(num_importance_samples=num_importance_samples, **kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_positive_int("num_bounds", self.num_bounds)
