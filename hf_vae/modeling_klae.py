"""The KL autoencoder of latent diffusion (Rombach et al. 2022), the image compressor of Stable Diffusion.

Architecture, parameter names and arithmetic are those of diffusers' `AutoencoderKL`:

    x ─ Encoder ─ quant_conv ─▶ q(z|x) = N(μ, σ²) ─ z ─ post_quant_conv ─ Decoder ─▶ x̂          x ∈ [-1, 1]
    loss = Σ|x − x̂| + kl_weight · KL(q(z|x) || N(0, I))

so a state dict moves between the two unchanged and `encode(x).latent_dist` / `decode(z).sample` behave as
diffusers pipelines expect. The perceptual (LPIPS) and adversarial (PatchGAN) terms of the full objective are
added by the trainer, because they need networks that are not part of the published model.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from .configuration_klae import KLAEConfig
from .conv_backbone import Decoder, Encoder
from .distributions import DiagonalGaussianDistribution, PixelLossLikelihood
from .modeling_base import AutoencoderPreTrainedModel, apply_forward_hook


class KLAEModel(AutoencoderPreTrainedModel):
    config_class = KLAEConfig
    _no_split_modules = ["ResnetBlock2D", "Attention"]

    def __init__(self, config: KLAEConfig):
        super().__init__(config)
        self.encoder = Encoder(
            config.in_channels, config.latent_channels, config.block_out_channels, config.layers_per_block,
            config.norm_num_groups, config.act_fn, double_z=True, mid_block_add_attention=config.mid_block_add_attention,
        )
        self.decoder = Decoder(
            config.latent_channels, config.out_channels, config.block_out_channels, config.layers_per_block,
            config.norm_num_groups, config.act_fn, mid_block_add_attention=config.mid_block_add_attention,
        )
        latent = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if config.use_post_quant_conv else None
        self.likelihood = PixelLossLikelihood(config.pixel_loss)
        self.post_init()

    # -- the pluggable pieces --------------------------------------------------------------------------------
    def _encode(self, pixel_values: torch.Tensor, condition=None) -> DiagonalGaussianDistribution:
        moments = self.encoder(pixel_values)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussianDistribution(moments)

    def _decode(self, latents: torch.Tensor, condition=None) -> torch.Tensor:
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def regularisation_loss(self, posterior, latents) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        kl = posterior.kl()
        return self.config.kl_weight * kl, {"kl": kl.mean()}

    # -- diffusers' public signatures ------------------------------------------------------------------------
    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """(B, C, H, W) images in [-1, 1] -> EncoderOutput(latent_dist=DiagonalGaussianDistribution)."""
        self.check_pixel_values(x)
        posterior = self._encode(x)
        return self._encoder_output(posterior, return_dict)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Optional[torch.Generator] = None):
        """(B, latent_channels, h, w) -> DecoderOutput(sample=(B, C, h·f, w·f)). `generator` is accepted for
        diffusers' signature; decoding is deterministic."""
        self.check_latents(z)
        return self._decoder_output(z, None, return_dict)
