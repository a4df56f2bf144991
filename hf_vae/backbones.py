"""The encoder and decoder networks of a config's `backbone`, and the attention setting they share.

    "mlp"      images flattened through dense layers (mlp_backbone)
    "burgess"  Burgess et al. (2018)'s β-VAE network: stride-2 convolutions, then dense layers (burgess_backbone)
    "conv"     diffusers-style ResNet blocks with a self-attention mid block (conv_backbone)
"""

from typing import Tuple

import torch.nn as nn

from .burgess_backbone import BurgessDecoder, BurgessEncoder
from .conv_backbone import Attention, ConvDecoder, ConvEncoder
from .mlp_backbone import MLPDecoder, MLPEncoder


def build_backbone(config, encoder_out: int, condition_dim: int = 0) -> Tuple[nn.Module, nn.Module]:
    """Encoder and decoder for `config.backbone`.

    `encoder_out` is the size of the posterior parameters: features of a vector latent, or channels of a spatial
    one (2·latent for a Gaussian, the code dimension for VQ). `condition_dim` is the width of a condition vector
    concatenated to both networks' inputs.
    """
    if config.backbone == "mlp":
        encoder = MLPEncoder(config.data_shape, config.hidden_dims, encoder_out, config.act_fn, condition_dim)
        decoder = MLPDecoder(config.data_shape, config.hidden_dims, config.latent_dim, config.act_fn, condition_dim)
        return encoder, decoder
    if config.backbone == "burgess":
        dense = dict(block_out_channels=config.block_out_channels, hidden_dims=config.hidden_dims,
                     act_fn=config.act_fn, condition_dim=condition_dim,
                     local_latent_channels=config.local_latent_channels)
        encoder = BurgessEncoder(config.in_channels, config.image_size, out_features=encoder_out, **dense)
        decoder = BurgessDecoder(config.in_channels, config.image_size, latent_dim=config.latent_dim, **dense)
        return encoder, decoder
    conv = dict(block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
                norm_num_groups=config.norm_num_groups, act_fn=config.act_fn,
                mid_block_add_attention=config.mid_block_add_attention, latent_channels=config.latent_channels,
                condition_dim=condition_dim, dropout=config.dropout)
    encoder = ConvEncoder(config.in_channels, config.image_size, out_features=encoder_out,
                          vector_latent=config.latent_dim is not None, **conv)
    decoder = ConvDecoder(config.in_channels, config.image_size, latent_dim=config.latent_dim, **conv)
    return encoder, decoder


#: the attention implementations of the mid block (transformers' `attn_implementation` names)
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def apply_attn_implementation(model: nn.Module, implementation: str) -> None:
    """Make every mid-block attention of `model` run as `implementation` ("eager"; anything else is "sdpa")."""
    implementation = "eager" if implementation == "eager" else "sdpa"
    for module in model.modules():
        if isinstance(module, Attention):
            module.implementation = implementation


class AttentionImplementationMixin:
    """transformers' `attn_implementation` ("sdpa" or "eager"), applied to the mid-block attention."""

    def post_init(self):
        super().post_init()
        apply_attn_implementation(self, self.config._attn_implementation)

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f'Specified `attn_implementation="{attn_implementation}"` is not supported by '
                             f'{type(self).__name__}: expected "sdpa" or "eager".')
        self.config._attn_implementation_internal = attn_implementation
        apply_attn_implementation(self, attn_implementation)
