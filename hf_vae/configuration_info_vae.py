"""Configuration of the InfoVAE / MMD-VAE (Zhao et al. 2019)."""

from .configuration_base import AutoencoderConfig, _check, check_real
from .configuration_wae import check_mmd_fields


class InfoVAEConfig(AutoencoderConfig):
    r"""A VAE whose objective adds a divergence between the aggregate posterior and the prior, here the MMD.

    Args:
        alpha (`float`, defaults to 0.0): α; the KL term is weighted by 1 − α (α = 1 drops it: the MMD-VAE).
        mmd_lambda (`float`, defaults to 1000.0): λ; the MMD term is weighted by α + λ − 1 (Zhao et al. use λ = 1000).
        kernel (`str`, defaults to "rbf"): "rbf" or "imq".
        kernel_bandwidth (`float`, defaults to 1.0): σ in the kernel's scale C = 2·latent_dim·σ².
        kernel_scales (`Sequence[float]`, defaults to (0.5,)): the kernel is summed over s·C; the default gives
            Zhao et al.'s kernel exp(−‖z − z̃‖² / latent_dim).
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "info_vae"

    def __init__(self, alpha: float = 0.0, mmd_lambda: float = 1000.0, kernel: str = "rbf",
                 kernel_bandwidth: float = 1.0, kernel_scales=(0.5,), **kwargs):
        self.alpha = alpha
        self.mmd_lambda = mmd_lambda
        self.kernel = kernel
        self.kernel_bandwidth = kernel_bandwidth
        self.kernel_scales = list(kernel_scales)
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_mmd_fields(self)
        check_real("alpha", self.alpha)
        check_real("mmd_lambda", self.mmd_lambda)
        _check(self.alpha <= 1, f"Expected `alpha` <= 1 (the KL weight 1 − α must not be negative), got {self.alpha!r}.")
        _check(self.alpha + self.mmd_lambda - 1 >= 0,
               f"Expected alpha + mmd_lambda >= 1 (the MMD weight α + λ − 1 must not be negative), got "
               f"alpha={self.alpha!r}, mmd_lambda={self.mmd_lambda!r}.")
