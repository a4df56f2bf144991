"""The HRQ-VAE (Hosking et al. 2022, "Hierarchical Sketch Induction for Paraphrase Generation"; pythae's HRQVAE).

The VQ-VAE with its quantiser swapped for hierarchical residual quantisation (hf_vae.hierarchical_quantization):

    z_e = encoder(x),  (q_1, …, q_L) ~ Gumbel-softmax codes of the residuals,  x̂ = decoder(Σ_l q_l)
    loss = −log p(x|z_q) + Σ_positions [ kl_weight · Σ_l KL(U ‖ softmax(logits_l)) + norm_loss_weight · norm loss ]

Everything else (code maps, the code prior, `encode_to_indices`/`decode_indices`, saving) is the VQ-VAE's: a code
map is (h, w, L) indices of `num_embeddings` codes each, the nearest codes level by level in evaluation.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .configuration_hrq_vae import HRQVAEConfig
from .hierarchical_quantization import HierarchicalResidualQuantizer
from .modeling_vqvae import VQVAEModel, VQVAEOutput
from .weight_init import init


@dataclass
class HRQVAEOutput(VQVAEOutput):
    """[`VQVAEOutput`] (its codebook and commitment losses are zero: nothing is snapped) plus

    Args:
        temperature (`()`): the Gumbel temperature of the first level in this pass.
    """

    temperature: Optional[torch.FloatTensor] = None


class HRQVAEModel(VQVAEModel):
    config_class = HRQVAEConfig
    output_class = HRQVAEOutput
    _no_split_modules = VQVAEModel._no_split_modules + ["HierarchicalResidualQuantizer"]

    def build_quantizer(self) -> HierarchicalResidualQuantizer:
        config = self.config
        return HierarchicalResidualQuantizer(
            config.num_quantizers, config.num_embeddings, config.embedding_dim, kl_weight=config.kl_weight,
            init_scale=config.init_scale, init_decay=config.init_decay, norm_loss_weight=config.norm_loss_weight,
            norm_loss_scale=config.norm_loss_scale, temperature_decay_steps=config.temperature_decay_steps,
            min_temperature=config.min_temperature, depth_drop_rate=config.depth_drop_rate)

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, HierarchicalResidualQuantizer):  # after its levels' VQ initialisation
            init.zeros_(module.steps)
            for depth, level in enumerate(module.levels):
                weight = level.embedding.weight
                directions = F.normalize(torch.empty(weight.shape, device=weight.device).uniform_(-1.0, 1.0), dim=-1)
                init.copy_(weight, directions * module.level_radius(depth))

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict]:
        loss, extras = super().regularisation_loss(posterior, latents)
        return loss, {**extras, "temperature": self.quantizer.temperatures()[0]}
