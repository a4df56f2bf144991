"""The prior p(z) of the Gaussian-latent families, as a component the base model delegates to.

    StandardNormalPrior   p(z) = N(0, I)
    TwoLevelPrior         p(z) = N(z_global; 0, I) · p(z_local | z_global)     (a local latent, `burgess_backbone`)

Each answers the three questions the skeleton asks of p(z): the KL of a posterior against it, a draw from it, and
its log-density. The two-level prior's conditional p(z_local | z_global) is a network of the decoder
(`decoder.local_prior`), so the component is built around that network on each use and owns no weights.

`LatentPriorMixin` gives the base model its p(z) hooks (`latent_prior`, `kl_divergence`, `sample_prior`,
`prior_log_prob`); a family with another prior (the VampPrior, the VQ-VAE's code prior) overrides them.
"""

import math
from typing import Callable, Optional, Tuple

import torch

from .distributions import gaussian_kl, gaussian_log_density, randn_tensor, standard_normal_log_prob


class StandardNormalPrior:
    """p(z) = N(0, I) over latents of `latent_shape`."""

    def __init__(self, latent_shape: Tuple[int, ...]):
        self.latent_shape = tuple(latent_shape)

    def kl(self, posterior, latents: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per example, (B,), in closed form."""
        return posterior.kl()

    def sample(self, num_samples: int, generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
        return randn_tensor((num_samples, *self.latent_shape), generator=generator, device=device, dtype=dtype)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I), (...,) for latents (..., *latent_shape)."""
        return standard_normal_log_prob(latents, event_dims=len(self.latent_shape))


class TwoLevelPrior(StandardNormalPrior):
    """p(z) = N(z_global; 0, I) p(z_local | z_global) over vector latents z = (z_global, z_local), z_global the first
    `global_dim` entries. `local_prior(z_global)` gives the (mean, log-variance) of p(z_local | z_global)."""

    def __init__(self, latent_shape: Tuple[int, ...], global_dim: int,
                 local_prior: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(latent_shape)
        self.global_dim = global_dim
        self.local_prior = local_prior

    def kl(self, posterior, latents: torch.Tensor) -> torch.Tensor:
        """KL(q(z_global|x) || N(0, I)) + E_q(z_global|x) KL(q(z_local|x) || p(z_local | z_global)): both in closed
        form except the expectation over z_global, for which the sampled `latents` give a one-sample estimate (the
        ELBO's own Monte Carlo estimate). (B,), or (K, B) for stacked latents."""
        d = self.global_dim
        mean, logvar = posterior.mean, posterior.logvar
        prior_mean, prior_logvar = self.local_prior(latents[..., :d])
        kl_global = gaussian_kl(mean[:, :d], logvar[:, :d]).sum(-1)
        return kl_global + gaussian_kl(mean[:, d:], logvar[:, d:], prior_mean, prior_logvar).sum(-1)

    def sample(self, num_samples: int, generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
        """Ancestrally: z_global ~ N(0, I), then z_local | z_global."""
        noise = super().sample(num_samples, generator, device, dtype)
        d = self.global_dim
        mean, logvar = self.local_prior(noise[:, :d])
        return torch.cat([noise[:, :d], mean + (0.5 * logvar).exp() * noise[:, d:]], dim=1)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        d = self.global_dim
        mean, logvar = self.local_prior(latents[..., :d])
        log_local = gaussian_log_density(latents[..., d:], mean, logvar).sum(-1)
        return standard_normal_log_prob(latents[..., :d], event_dims=1) + log_local


class LatentPriorMixin:
    """The p(z) hooks of the base model, asked of `latent_prior`."""

    #: whether the family's objective works with the two-level prior of `config.local_latent_channels` (its KL
    #: goes through `kl_divergence` and its prior through `sample_prior` / `prior_log_prob`)
    supports_local_latent = False

    def check_latent_prior(self) -> None:
        """A local latent on a family whose objective cannot take the two-level prior is a config error."""
        if getattr(self.config, "local_latent_channels", 0) and not self.supports_local_latent:
            raise ValueError(f"Expected local_latent_channels=0 for {type(self).__name__}, got "
                             f"{self.config.local_latent_channels}: its objective does not take the two-level "
                             f"prior (VAEModel, BetaVAEModel, IWAEModel and MIWAEModel do).")

    @property
    def local_latent_size(self) -> int:
        """Elements of the local latent, which follows the global one in z (0 without one)."""
        shape = getattr(self.config, "local_latent_shape", None)
        return math.prod(shape) if shape else 0

    @property
    def latent_prior(self) -> StandardNormalPrior:
        """p(z): N(0, I), or the two-level prior whose conditional is the decoder's `local_prior` network."""
        if self.local_latent_size:
            return TwoLevelPrior(self.latent_shape, self.config.latent_dim, self.decoder.local_prior)
        return StandardNormalPrior(self.latent_shape)

    def kl_divergence(self, posterior, latents: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per example: (B,), or (K, B) for stacked latents with a local latent."""
        return self.latent_prior.kl(posterior, latents)

    def sample_prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(num_samples, *latent_shape) from p(z)."""
        return self.latent_prior.sample(num_samples, generator, self.execution_device, self.dtype)

    def prior_log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """log p(z), (...,) for latents (..., *latent_shape)."""
        return self.latent_prior.log_prob(latents)
