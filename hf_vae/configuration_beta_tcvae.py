"""Configuration of the β-TCVAE (Chen et al. 2018)."""

from typing import Optional

from .configuration_base import _check, check_positive_int, check_real
from .configuration_vae import VAEConfig

ESTIMATORS = ("mws", "mss")


class BetaTCVAEConfig(VAEConfig):
    r"""A VAE whose KL term is split into index-code mutual information, total correlation and dimension-wise KL,
    with the total correlation weighted by β.

    Args:
        beta (`float`, defaults to 6.0): weight of the total correlation (Chen et al. use β = 6 on dSprites).
        alpha (`float`, defaults to 1.0): weight of the index-code mutual information.
        gamma (`float`, defaults to 1.0): weight of the dimension-wise KL.
        estimator (`str`, defaults to "mws"): how log q(z) is estimated from the minibatch: "mws"
            (minibatch-weighted sampling) or "mss" (minibatch-stratified sampling) (Chen et al., sec. 3.1, app. C).
        dataset_size (`int`, defaults to None): N, the number of training examples, which both estimators need;
            the trainer fills it in from the dataset. Needed before training.
        Other fields are those of [`AutoencoderConfig`]; the latent must be a vector (`latent_dim`).
    """

    model_type = "beta_tcvae"

    def __init__(self, beta: float = 6.0, alpha: float = 1.0, gamma: float = 1.0, estimator: str = "mws",
                 dataset_size: Optional[int] = None, **kwargs):
        self.beta = beta
        self.alpha = alpha
        self.gamma = gamma
        self.estimator = estimator
        self.dataset_size = dataset_size
        super().__init__(**kwargs)

    def validate_fields(self) -> None:
        super().validate_fields()
        for name in ("beta", "alpha", "gamma"):
            check_real(name, getattr(self, name), low=0)
        _check(self.estimator in ESTIMATORS, f"Expected `estimator` in {ESTIMATORS}, got {self.estimator!r}.")
        _check(self.vector_latent, "The β-TCVAE factorises a vector latent: expected an int `latent_dim` (with the "
                                   "conv backbone, a dense bottleneck), got a spatial latent.")
        if self.dataset_size is not None:
            check_positive_int("dataset_size", self.dataset_size)
