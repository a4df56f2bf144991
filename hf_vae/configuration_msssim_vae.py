"""Configuration of the MS-SSIM VAE (Snell et al. 2017; pythae's MSSSIM_VAE)."""

from .configuration_base import _check, check_bool, check_positive_int, check_real
from .configuration_vae import VAEConfig


class MSSSIMVAEConfig(VAEConfig):
    r"""A VAE whose reconstruction term is 1 − MS-SSIM(E[x|z], x) instead of −log p(x|z): loss = (1 − MS-SSIM) + β·KL.

    Args:
        beta (`float`, defaults to 1.0): weight of the KL term (pythae's default). The reconstruction term lies in
            [0, 1] per example while the KL is in nats, so useful values are small (the recipe's is measured).
        window_size (`int`, defaults to 11): side of the Gaussian window (σ = 1.5) of the SSIM statistics; odd.
        normalize (`bool`, defaults to True): map each scale's factor v ∈ [−1, 1] to (v + 1)/2 before its
            fractional power (pythae's choice; keeps the loss and its gradient defined for anti-correlated
            structure). False is the paper's product.
        Other fields are those of [`AutoencoderConfig`]. `likelihood` names how the decoder's output is read
            ("bernoulli": logits of intensities in [0, 1]; "gaussian"/"laplace": the image in [−1, 1]) and so
            the data the model takes; no density is fitted, so the model reports no log-likelihood. The images
            need an `image_size`.

    Example:
        >>> from hf_vae import MSSSIMVAEConfig, MSSSIMVAEModel
        >>> model = MSSSIMVAEModel(MSSSIMVAEConfig(in_channels=1, image_size=28, latent_dim=16, beta=0.01))
    """

    model_type = "msssim_vae"

    def __init__(self, beta: float = 1.0, window_size: int = 11, normalize: bool = True, **kwargs):
        self.beta = beta
        self.window_size = window_size
        self.normalize = normalize
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        check_real("beta", self.beta, low=0)
        check_positive_int("window_size", self.window_size)
        _check(self.window_size % 2 == 1, f"Expected an odd `window_size` (a window centred on its pixel), got "
                                          f"{self.window_size}.")
        check_bool("normalize", self.normalize)
        _check(self.image_size is not None, "MS-SSIM compares images: expected an int `image_size`, got None "
                                            "(flat data).")
        _check(not self.learn_likelihood_scale, "The MS-SSIM loss has no likelihood scale to learn: expected "
                                                "learn_likelihood_scale=False, got True.")
