"""The β-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational Autoencoders").

The VAE's average KL splits into three terms (their eq. 2), with n the index of the training example:

    E_n KL(q(z|n) ‖ p(z)) = I_q(z; n) + KL(q(z) ‖ Π_j q(z_j)) + Σ_j KL(q(z_j) ‖ p(z_j))
                           index-code MI   total correlation     dimension-wise KL

and the β-TCVAE weights them α, β, γ (β on the total correlation). Per example, at its sample z_i ~ q(z|x_i):

    MI_i = log q(z_i|x_i) − log q(z_i),   TC_i = log q(z_i) − Σ_j log q(z_ij),   DWKL_i = Σ_j log q(z_ij) − log p(z_i)

(they sum to log q(z_i|x_i) − log p(z_i), the one-sample KL). The aggregate posterior q(z) = (1/N) Σ_n q(z|n) is
estimated from the minibatch (their sec. 3.1): minibatch-weighted sampling

    log q(z_i) ≈ logsumexp_j log q(z_i|x_j) − log(N·M)

and likewise for each q(z_ij); or minibatch-stratified sampling, which gives z_i's own example its exact weight 1/N
and the other M − 1 examples (N − 1)/(N(M − 1)) each (`stratified_log_weights`). Everything comes from the batch the base model's `regularisation_loss` hook already receives.
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .configuration_beta_tcvae import BetaTCVAEConfig
from .distributions import LOG_2PI
from .modeling_base import AutoencoderOutput
from .modeling_vae import VAEModel


@dataclass
class BetaTCVAEOutput(AutoencoderOutput):
    """`AutoencoderOutput` plus the three unweighted terms of the KL, batch averages (`()`):
    `mutual_information`, `total_correlation`, `dimension_wise_kl`."""

    mutual_information: Optional[torch.FloatTensor] = None
    total_correlation: Optional[torch.FloatTensor] = None
    dimension_wise_kl: Optional[torch.FloatTensor] = None


def stratified_log_weights(batch_size: int, dataset_size: int, device=None, dtype=None) -> torch.Tensor:
    """(M, M) log-weights w_ij of minibatch-stratified sampling: q(z_i) ≈ Σ_j w_ij q(z_i|x_j).

    z_i's own example has weight 1/N (its exact share of q(z) = (1/N) Σ_n q(z|n)); the other M − 1 examples are a
    uniform sample of the remaining N − 1, so each stands for (N − 1)/(M − 1) of them: weight (N − 1)/(N(M − 1)).
    Each row sums to 1, and the weighted sum is an unbiased estimate of q(z_i).
    """
    n, m = dataset_size, batch_size
    weights = torch.full((m, m), (n - 1) / (n * (m - 1)), device=device, dtype=torch.float64)
    weights.fill_diagonal_(1.0 / n)
    return weights.log().to(dtype)


def kl_decomposition(posterior_mean: torch.Tensor, posterior_logvar: torch.Tensor, latents: torch.Tensor,
                     dataset_size: int, estimator: str = "mws") -> Dict[str, torch.Tensor]:
    """Per-example index-code MI, total correlation and dimension-wise KL, each (B,), from (B, D) posteriors and
    their samples."""
    batch = latents.shape[0]
    # log q(z_id | x_j) for every pair (i, j) and dimension d: (B, B, D)
    diff = latents[:, None, :] - posterior_mean[None, :, :]
    log_qz_pairs = -0.5 * (LOG_2PI + posterior_logvar[None] + diff.pow(2) * torch.exp(-posterior_logvar[None]))
    if estimator == "mws":
        log_weights = torch.full((batch, batch), -math.log(batch * dataset_size), device=latents.device,
                                 dtype=latents.dtype)
    else:
        log_weights = stratified_log_weights(batch, dataset_size, latents.device, latents.dtype)
    log_qz = torch.logsumexp(log_weights + log_qz_pairs.sum(2), dim=1)  # (B,)
    log_qz_product = torch.logsumexp(log_weights[:, :, None] + log_qz_pairs, dim=1).sum(1)  # (B,)
    log_qz_given_x = log_qz_pairs.diagonal(dim1=0, dim2=1).sum(0)  # (B,): j = i
    log_pz = (-0.5 * (LOG_2PI + latents.pow(2))).sum(1)
    return {"mutual_information": log_qz_given_x - log_qz, "total_correlation": log_qz - log_qz_product,
            "dimension_wise_kl": log_qz_product - log_pz}


class BetaTCVAEModel(VAEModel):
    config_class = BetaTCVAEConfig
    output_class = BetaTCVAEOutput
    #: the decomposition estimates log p(z) under N(0, I), one factor per dimension
    supports_local_latent = False

    def __init__(self, config: BetaTCVAEConfig):
        super().__init__(config)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        config = self.config
        if config.dataset_size is None:
            raise ValueError("The β-TCVAE estimates q(z) from the minibatch and needs the number of training "
                             "examples: expected an int `dataset_size` in its config, got None.")
        if latents.shape[0] < 2:
            raise ValueError(f"The β-TCVAE estimates q(z) from the minibatch: expected at least 2 examples, got "
                             f"{latents.shape[0]}.")
        terms = kl_decomposition(posterior.mean, posterior.logvar, latents, config.dataset_size, config.estimator)
        weighted = (config.alpha * terms["mutual_information"] + config.beta * terms["total_correlation"]
                    + config.gamma * terms["dimension_wise_kl"])
        extras = {name: value.mean().detach() for name, value in terms.items()}
        return weighted, {"kl": posterior.kl().mean(), **extras}
