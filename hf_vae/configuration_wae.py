"""Configuration of the Wasserstein autoencoder with the MMD penalty (Tolstikhin et al. 2018)."""

from .configuration_base import AutoencoderConfig, _check, check_real

#: the MMD kernels of hf_vae.mmd (named here so that the config needs no torch)
KERNELS = ("imq", "rbf")

DEFAULT_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def check_mmd_fields(config) -> None:
    _check(config.kernel in KERNELS, f"Expected `kernel` in {KERNELS}, got {config.kernel!r}.")
    check_real("kernel_bandwidth", config.kernel_bandwidth, low=0, low_open=True)
    _check(len(config.kernel_scales) > 0, f"Expected `kernel_scales` to be a non-empty list of positive numbers, got "
                                          f"{config.kernel_scales!r}.")
    for i, scale in enumerate(config.kernel_scales):
        check_real(f"kernel_scales[{i}]", scale, low=0, low_open=True)


class WAEConfig(AutoencoderConfig):
    r"""A deterministic autoencoder whose aggregate posterior is pulled to p(z) = N(0, I) by an MMD penalty.

    Args:
        mmd_weight (`float`, defaults to 10.0): λ, the weight of MMD²(q(z), p(z)) (Tolstikhin et al. use 10 on MNIST).
        kernel (`str`, defaults to "imq"): "imq" (inverse multiquadratics) or "rbf".
        kernel_bandwidth (`float`, defaults to 1.0): σ in the kernel's scale C = 2·latent_dim·σ² (the prior's std).
        kernel_scales (`Sequence[float]`, defaults to (0.1, 0.2, 0.5, 1, 2, 5, 10)): the kernel is summed over s·C.
        Other fields are those of [`AutoencoderConfig`].
    """

    model_type = "wae"

    def __init__(self, mmd_weight: float = 10.0, kernel: str = "imq", kernel_bandwidth: float = 1.0,
                 kernel_scales=DEFAULT_SCALES, **kwargs):
        self.mmd_weight = mmd_weight
        self.kernel = kernel
        self.kernel_bandwidth = kernel_bandwidth
        self.kernel_scales = list(kernel_scales)
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_mmd_fields(self)
        check_real("mmd_weight", self.mmd_weight, low=0)
