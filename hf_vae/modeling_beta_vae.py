"""The β-VAE: a VAE whose regulariser is β·KL (Higgins et al. 2017) or γ·|KL − C(t)| (Burgess et al. 2018).

The capacity C(t) = min(C_max, C_max · t / capacity_steps) grows with the training step t, which the trainer
sets through `set_training_step`; t is a buffer, so it is checkpointed and resumes with the run.
"""

from typing import Dict, Tuple

import torch

from .configuration_beta_vae import BetaVAEConfig
from .modeling_vae import VAEModel
from .weight_init import init


class BetaVAEModel(VAEModel):
    config_class = BetaVAEConfig

    def __init__(self, config: BetaVAEConfig):
        super().__init__(config)
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long))

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if module is self:
            init.zeros_(self.training_step)

    def set_training_step(self, step: int) -> None:
        self.training_step.fill_(int(step))

    @property
    def capacity(self) -> torch.Tensor:
        """C(t) in nats (Burgess et al. 2018, sec. 5), a 0-d tensor (read from the step buffer without a host sync,
        so that the pass stays traceable)."""
        config = self.config
        growth = self.training_step.to(torch.float64) * (config.capacity_max / config.capacity_steps)
        return growth.clamp(max=config.capacity_max)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        kl = self.kl_divergence(posterior, latents)
        if self.config.use_capacity:
            # The capacity constrains the batch-average KL (Burgess et al. 2018, eq. 8), not each example's.
            capacity_loss = self.config.gamma * (kl.mean() - self.capacity.to(kl.dtype)).abs()
            return capacity_loss.expand_as(kl), {"kl": kl.mean()}
        return self.config.beta * kl, {"kl": kl.mean()}
