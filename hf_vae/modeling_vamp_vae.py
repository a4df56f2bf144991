"""The VAE with a VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior").

The prior is the encoder's own posterior, averaged over C learned pseudo-inputs u_c:

    p(z) = (1/C) Σ_c q(z | u_c)                                               (Tomczak & Welling, eq. 9)

so the pieces that change are `prior_log_prob` and `sample_prior`. The KL to this mixture has no closed form, so
the regulariser is its one-sample estimate log q(z|x) − log p(z) at the decoded z (their eq. 11). For a Bernoulli
decoder the pseudo-inputs are clipped to [0, 1] (their hard-tanh), so they stay valid images.
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .configuration_vamp_vae import VampVAEConfig
from .distributions import LOG_2PI, randn_tensor
from .modeling_base import AutoencoderPreTrainedModel
from .weight_init import init


class PseudoInputs(nn.Module):
    """The C learned pseudo-inputs u_c, (C, *data_shape), clipped to the data range when it is bounded."""

    def __init__(self, num: int, data_shape, data_range: Optional[tuple], init_std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, *data_shape))
        self.data_range = data_range
        self.init_mean = 0.0 if data_range is None else 0.5 * (data_range[0] + data_range[1])
        self.init_std = init_std

    def forward(self) -> torch.Tensor:
        if self.data_range is None:
            return self.weight
        return torch.clamp(self.weight, *self.data_range)


class VampVAEModel(AutoencoderPreTrainedModel):
    config_class = VampVAEConfig

    def __init__(self, config: VampVAEConfig):
        super().__init__(config)
        encoder_out = 2 * (config.latent_dim if config.vector_latent else config.latent_channels)
        self.encoder, self.decoder = self.build_backbone(encoder_out)
        self.likelihood = self.build_likelihood()
        self.pseudo_inputs = PseudoInputs(config.num_pseudo_inputs, config.data_shape, self.likelihood.data_range,
                                          config.pseudo_input_std)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PseudoInputs):
            init.normal_(module.weight, mean=module.init_mean, std=module.init_std)

    def pseudo_posterior(self):
        """q(z|u_c) for every pseudo-input: a Gaussian with mean and log-variance (C, *latent_shape)."""
        return self.posterior(self.encoder(self.pseudo_inputs(), None))

    def prior_log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_c log q(z|u_c) − log C; latents (..., *latent_shape) -> (...)."""
        components = self.pseudo_posterior()
        mean, logvar = components.mean.flatten(1), components.logvar.flatten(1)  # (C, D)
        event = len(self.latent_shape)
        z = latents.flatten(latents.dim() - event)  # (..., D)
        precision = torch.exp(-logvar)
        # Σ_d (z_d − μ_cd)² / σ²_cd expanded into matrix products, so no (..., C, D) tensor is formed.
        mahalanobis = (z.pow(2) @ precision.T - 2 * z @ (mean * precision).T
                       + (mean.pow(2) * precision).sum(1))  # (..., C)
        log_components = -0.5 * (mean.shape[1] * LOG_2PI + logvar.sum(1) + mahalanobis)
        return torch.logsumexp(log_components, dim=-1) - math.log(mean.shape[0])

    def sample_prior(self, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Pick a pseudo-input uniformly, then sample its posterior: (num_samples, *latent_shape)."""
        components = self.pseudo_posterior()
        device = generator.device if generator is not None else self.execution_device
        index = torch.randint(self.config.num_pseudo_inputs, (num_samples,), generator=generator, device=device)
        index = index.to(self.execution_device)
        eps = randn_tensor((num_samples, *self.latent_shape), generator=generator, device=self.execution_device,
                           dtype=self.dtype)
        return components.mean[index] + components.std[index] * eps

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # One-sample estimate of KL(q(z|x) || p(z)) at the decoded z (Tomczak & Welling, eq. 11).
        kl = posterior.log_prob(latents) - self.prior_log_prob(latents)
        return kl, {"kl": kl.mean()}
