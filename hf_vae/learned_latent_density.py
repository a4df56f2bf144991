"""What the ex-post densities with trained networks share (the MAF, the IAF, the two-stage VAE): standardised
latents, maximum-likelihood fitting by Adam on the encoded training latents, and frozen weights once fitted.

The latents are standardised per dimension before the network sees them, u = (z − shift) / scale, so one set of
hyper-parameters suits latents of any scale; the density of z follows by the change of variables
log p(z) = log p_u(u) − Σ_i log scale_i.
"""

import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn


#: the largest gradient norm of one fitting step
FIT_MAX_GRAD_NORM = 10.0


class LearnedLatentDensity(nn.Module):
    """A density over flat latents (N, D) with `log_prob`, `sample` and `fit`. A subclass gives the density of the
    standardised latents: `standard_log_prob(u)`, `standard_sample(n, generator)`, and optionally `fit_loss(u)`
    (the negative log-likelihood by default; the two-stage VAE's is its negative ELBO)."""

    #: the fields of `settings` that size the networks (recorded in the config, so `from_pretrained` rebuilds them)
    kind = None

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @property
    def settings(self) -> Dict[str, Any]:
        """The sizes that rebuild this density (`latent_density_settings` in the config)."""
        raise NotImplementedError

    def standard_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def standard_sample(self, num_samples: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError

    def fit_loss(self, u: torch.Tensor) -> torch.Tensor:
        """The per-example training loss on standardised latents: −log p_u(u)."""
        return -self.standard_log_prob(u)

    def finish_fit(self, u: torch.Tensor) -> None:
        """What a density sets from all its standardised training latents once the networks are trained (the
        two-stage VAE's γ); nothing by default."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), (N, D) -> (N,)."""
        u = (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)
        return self.standard_log_prob(u) - self.scale.to(z.dtype).log().sum()

    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(num_samples, D) draws of z."""
        return self.standard_sample(num_samples, generator) * self.scale + self.shift

    def noise(self, num_samples: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """N(0, I) draws (num_samples, D) from `generator` (on its device), moved to the density's."""
        device = generator.device if generator is not None else self.shift.device
        eps = torch.randn(num_samples, self.dim, generator=generator, device=device, dtype=self.shift.dtype)
        return eps.to(self.shift.device)

    def fit(self, z: torch.Tensor, num_steps: int = 2000, learning_rate: float = 1e-3, batch_size: int = 256,
            generator: Optional[torch.Generator] = None) -> "LearnedLatentDensity":
        """Maximum likelihood on (N, D) latents: Adam on minibatches drawn by `generator`; returns self, frozen.

        Attributes set: `final_loss_` (the mean training loss of the last tenth of the steps, nats per latent)."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"Expected latents of shape (N, {self.dim}), got {tuple(z.shape)}.")
        if z.shape[0] < 2:
            raise ValueError(f"Expected at least 2 latents to fit the {self.kind} density to, got {z.shape[0]}.")
        for name, value in (("num_steps", num_steps), ("batch_size", batch_size)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"Expected a positive int {name} for fitting the {self.kind} density, got {value!r}.")
        z = z.detach().to(self.shift.device, self.shift.dtype)
        with torch.no_grad():
            self.shift.copy_(z.mean(0))
            self.scale.copy_(z.std(0).clamp(min=1e-6))
        u = (z - self.shift) / self.scale
        self.requires_grad_(True)
        optimiser = torch.optim.Adam(self.parameters(), lr=learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, num_steps)
        tail, losses, self.skipped_steps_ = max(1, num_steps // 10), [], 0
        self.train()
        with torch.enable_grad():
            for _ in range(num_steps):
                index = torch.randint(u.shape[0], (min(batch_size, u.shape[0]),), generator=generator)
                loss = self.fit_loss(u[index.to(u.device)]).mean()
                optimiser.zero_grad(set_to_none=True)
                # A batch whose likelihood overflows (an inverse autoregressive step dividing by a gate near 0)
                # would write inf/NaN into every weight: it is skipped, and the gradient norm is bounded.
                if torch.isfinite(loss):
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.parameters(), FIT_MAX_GRAD_NORM)
                    optimiser.step()
                    losses.append(loss.item())
                else:
                    self.skipped_steps_ += 1
                schedule.step()
        self.eval().requires_grad_(False)
        if not losses:
            raise ValueError(f"Fitting the {self.kind} density gave a non-finite loss at every step: expected finite "
                             f"latents of moderate scale.")
        self.finish_fit(u)
        self.final_loss_ = sum(losses[-tail:]) / min(tail, len(losses))
        return self


def standard_normal_log_prob(u: torch.Tensor) -> torch.Tensor:
    """log N(u; 0, I), (N, D) -> (N,)."""
    return -0.5 * (u.pow(2).sum(-1) + u.shape[-1] * math.log(2 * math.pi))
