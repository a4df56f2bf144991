"""The combination importance-weighted autoencoder (Rainforth et al. 2018, "Tighter Variational Bounds are Not
Necessarily Better").

The IWAE's bound L_K gives the encoder a gradient whose signal-to-noise ratio falls as K grows; mixing in the
ELBO restores it:

    CIWAE_β(x) = β·ELBO(x) + (1 − β)·L_K(x),   ELBO = (1/K) Σ_k log w_k,   L_K = log (1/K) Σ_k w_k   (their eq. 6)

from the same K samples. Only `combine_samples` changes from the IWAE.
"""

import torch

from .configuration_ciwae import CIWAEConfig
from .modeling_iwae import IWAEModel, importance_weighted_bound


class CIWAEModel(IWAEModel):
    config_class = CIWAEConfig

    def __init__(self, config: CIWAEConfig):
        super().__init__(config)

    def combine_samples(self, reconstruction_loss: torch.Tensor, regularisation_loss: torch.Tensor) -> torch.Tensor:
        """(K, B) per-sample terms -> (B,) −CIWAE_β."""
        log_weights = -(reconstruction_loss + regularisation_loss)
        beta = self.config.elbo_weight
        return -(beta * log_weights.mean(0) + (1 - beta) * importance_weighted_bound(log_weights))
