"""The two-stage VAE as an ex-post latent density (Dai & Wipf 2019, "Diagnosing and Enhancing VAE Models", sec. 4;
pythae's TwoStageVAESampler).

A first VAE's aggregate posterior q(z) rarely fills its prior N(0, I), so decoding prior draws lands off the data.
A second, small VAE is fitted to the first one's latents z: u ~ N(0, I), p(z|u) = N(μ(u), γI), q(u|z) =
N(m(z), diag s²(z)). Samples are the decoder's means μ(u), u ~ N(0, I) (their sec. 4).

γ is what makes the second stage work (their sec. 3): as it falls, the reconstruction term outweighs the KL, and
the second stage's aggregate posterior approaches N(0, I). For fixed networks the ELBO is maximised over γ by the
mean squared reconstruction error (Rybkin et al. 2021, "Simple and Effective VAE Training with Calibrated
Decoders", sec. 3), so each fitting step sets γ there in closed form rather than learning it: learned by Adam, log γ
moves at most one learning rate per step, and 2,000 steps leave it near e⁻¹, far above the error it should track.
After fitting, γ is the error over all the fitted latents; `log_prob` uses it.

Its log-density has no closed form; `log_prob` is the importance-sampled estimate of Burda et al. (2016, eq. 8)
with `num_importance_samples` draws of q(u|z), a lower bound in expectation.
"""

import math
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from .learned_latent_density import LearnedLatentDensity, standard_normal_log_prob

#: the smallest γ: a second stage that reconstructs its latents exactly would otherwise put log γ at −∞
MIN_GAMMA = 1e-8


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(log_var)) summed over the last dimension."""
    return -0.5 * ((x - mean).pow(2) / log_var.exp() + log_var + math.log(2 * math.pi)).sum(-1)


class TwoStageDensity(LearnedLatentDensity):
    """A second VAE over the standardised latents: encoder z -> (m, log s²), decoder u -> μ, and log γ."""

    kind = "two_stage"

    def __init__(self, dim: int, hidden_dims: Sequence[int] = (256, 256), latent_dim: Optional[int] = None,
                 num_importance_samples: int = 64):
        latent_dim = dim if latent_dim is None else latent_dim
        if not (isinstance(hidden_dims, (list, tuple)) and hidden_dims
                and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden_dims)):
            raise ValueError(f"Expected hidden_dims of the two_stage density as a non-empty list of positive ints, "
                             f"got {hidden_dims!r}.")
        for name, value in (("latent_dim", latent_dim), ("num_importance_samples", num_importance_samples)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"Expected a positive int {name} for the two_stage density, got {value!r}.")
        super().__init__(dim)
        self.hidden_dims, self.latent_dim = list(hidden_dims), latent_dim
        self.num_importance_samples = num_importance_samples
        self.encoder = _mlp([dim, *hidden_dims, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, *hidden_dims, dim])
        self.register_buffer("log_gamma", torch.zeros(()))

    @property
    def settings(self) -> Dict[str, Any]:
        return {"hidden_dims": self.hidden_dims, "latent_dim": self.latent_dim,
                "num_importance_samples": self.num_importance_samples}

    def encode(self, z: torch.Tensor):
        mean, log_var = self.encoder(z).chunk(2, dim=-1)
        return mean, log_var

    def log_joint_minus_proposal(self, z: torch.Tensor, num_samples: int, fit_gamma: bool = False) -> torch.Tensor:
        """(num_samples, N) log p(z|u_k) + log p(u_k) − log q(u_k|z), u_k ~ q(u|z) reparameterised. With
        `fit_gamma`, γ is first set to these draws' mean squared reconstruction error (the γ maximising the bound)."""
        u, mean, log_var, decoded = self._reconstruct(z, num_samples)
        if fit_gamma:
            with torch.no_grad():
                self.log_gamma.copy_((z - decoded).pow(2).mean().clamp(min=MIN_GAMMA).log())
        log_likelihood = _gaussian_log_prob(z, decoded, self.log_gamma.expand_as(decoded))
        return log_likelihood + standard_normal_log_prob(u) - _gaussian_log_prob(u, mean, log_var)

    def fit_loss(self, u: torch.Tensor) -> torch.Tensor:
        """The negative ELBO of the second stage (one sample of q(u|z)) at the batch's optimal γ."""
        return -self.log_joint_minus_proposal(u, 1, fit_gamma=True)[0]

    @torch.no_grad()
    def finish_fit(self, u: torch.Tensor) -> None:
        """γ of the fitted networks: the mean squared reconstruction error over all of `u`, one draw of q(u|z) each."""
        squared = sum(float((chunk - self._reconstruct(chunk, 1)[3]).pow(2).sum()) for chunk in u.split(4096))
        self.log_gamma.fill_(math.log(max(squared / u.numel(), MIN_GAMMA)))

    def _reconstruct(self, z: torch.Tensor, num_samples: int):
        """(u, m, log s², μ(u)): `num_samples` reparameterised draws u ~ q(u|z) (num_samples, N, latent_dim), the
        encoder's outputs, and the draws' decoded means."""
        mean, log_var = self.encode(z)
        u = mean + (0.5 * log_var).exp() * torch.randn(num_samples, *mean.shape, device=z.device, dtype=z.dtype)
        return u, mean, log_var, self.decoder(u)

    def standard_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        log_weights = self.log_joint_minus_proposal(u, self.num_importance_samples)
        return torch.logsumexp(log_weights, dim=0) - math.log(self.num_importance_samples)

    def standard_sample(self, num_samples: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        noise = torch.randn(num_samples, self.latent_dim, generator=generator,
                            device=generator.device if generator is not None else self.shift.device,
                            dtype=self.shift.dtype).to(self.shift.device)
        return self.decoder(noise)
