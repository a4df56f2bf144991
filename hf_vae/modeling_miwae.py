"""The multiply importance-weighted autoencoder (Rainforth et al. 2018, "Tighter Variational Bounds are Not
Necessarily Better").

M × K posterior samples per example; the objective is the average of M independent K-sample IWAE bounds,

    L_{M,K}(x) = (1/M) Σ_m log (1/K) Σ_k w_{m,k}                                 (Rainforth et al., eq. 5)

Only `combine_samples` changes from the IWAE: it groups the M·K samples into M bounds.
"""

import torch

from .configuration_miwae import MIWAEConfig
from .modeling_iwae import IWAEModel, importance_weighted_bound


class MIWAEModel(IWAEModel):
    config_class = MIWAEConfig

    def __init__(self, config: MIWAEConfig):
        super().__init__(config)

    @property
    def num_posterior_samples(self) -> int:
        return self.config.num_bounds * self.config.num_importance_samples

    def combine_samples(self, reconstruction_loss: torch.Tensor, regularisation_loss: torch.Tensor) -> torch.Tensor:
        """(M·K, B) per-sample terms -> (B,) −L_{M,K}."""
        log_weights = -(reconstruction_loss + regularisation_loss)
        log_weights = log_weights.view(self.config.num_bounds, self.config.num_importance_samples, -1)
        return -importance_weighted_bound(log_weights.transpose(0, 1)).mean(0)
