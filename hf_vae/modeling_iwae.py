"""The importance-weighted autoencoder (Burda et al. 2016, "Importance Weighted Autoencoders").

The VAE's networks, trained on a tighter bound: with K samples z_k ~ q(z|x) per example,

    L_K(x) = log (1/K) Σ_k w_k,    log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x)      (Burda et al., eq. 8)

L_1 is the ELBO, and E[L_K] ≤ E[L_{K+1}] ≤ log p(x) (their Theorem 1). Two pieces change:
`regularisation_loss` returns the per-sample log q(z_k|x) − log p(z_k), and `combine_samples` turns the K
per-sample terms into −L_K with a log-sum-exp.
"""

import math
from typing import Dict, Tuple

import torch

from .configuration_iwae import IWAEConfig
from .modeling_vae import VAEModel


def importance_weighted_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """(K, ...) log-weights -> (...) log (1/K) Σ_k w_k, computed stably."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


class IWAEModel(VAEModel):
    config_class = IWAEConfig

    def __init__(self, config: IWAEConfig):
        super().__init__(config)

    @property
    def num_posterior_samples(self) -> int:
        return self.config.num_importance_samples

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # log q(z_k|x) − log p(z_k) for each sample: the part of −log w_k that is not the reconstruction term.
        # (The analytic KL is reported for comparison with the VAE; it is not the objective's term.)
        return posterior.log_prob(latents) - self.prior_log_prob(latents), {"kl": self.kl_divergence(posterior, latents).mean()}

    def combine_samples(self, reconstruction_loss: torch.Tensor, regularisation_loss: torch.Tensor) -> torch.Tensor:
        """(K, B) per-sample terms -> (B,) −L_K."""
        return -importance_weighted_bound(-(reconstruction_loss + regularisation_loss))
