"""Configuration of the partially importance-weighted autoencoder (Rainforth et al. 2018)."""

from .configuration_miwae import MIWAEConfig


class PIWAEConfig(MIWAEConfig):
    r"""A VAE whose decoder is trained on the IWAE bound over all M·K samples and whose encoder on the MIWAE bound
    (M groups of K) from the same samples.

    Args:
        num_bounds (`int`, defaults to 8): M, the groups of samples whose K-sample bounds the encoder's objective
            averages.
        num_importance_samples (`int`, defaults to 8): K, the samples in each group; the decoder's bound uses all
            M·K samples at once.
        Other fields are those of [`AutoencoderConfig`].

    Rainforth et al. (2018, sec. 5) show that a tighter bound helps the generative network while its inference
    network's gradient signal-to-noise ratio decays as O(1/√K); PIWAE gives each network the bound that suits it.
    M = 1 is the IWAE with K samples; K = 1 trains the encoder on the M-sample ELBO.
    """

    model_type = "piwae"

    def __init__(self, num_bounds: int = 8, num_importance_samples: int = 8, **kwargs):
        super().__init__(num_bounds=num_bounds, num_importance_samples=num_importance_samples, **kwargs)
