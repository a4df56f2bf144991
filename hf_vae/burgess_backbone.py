"""The convolutional β-VAE architecture of Burgess et al. (2018), "Understanding disentangling in β-VAE",
appendix A.1 (also Locatello et al. 2019's disentanglement_lib "conv" encoder/decoder).

Encoder: stride-2 4x4 convolutions (`block_out_channels`, 32 each in the paper: 64x64 -> 4x4), ReLU, then fully
connected layers (`hidden_dims`, 256 and 256 in the paper) and a linear layer to the posterior parameters.
Decoder: the transpose, with 4x4 stride-2 transposed convolutions back to the image.

Plain convolutions, no normalisation: about 30 MFLOP per 64x64 image forward, some 20x less than the ResNet
blocks of `conv_backbone` at the same resolution, which makes it the architecture of choice for dSprites-like
data on a CPU. A condition vector (the CVAE) is broadcast as extra input channels of the encoder and
concatenated to the latent of the decoder.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .conv_backbone import get_activation


def _he(layer: nn.Module) -> nn.Module:
    """Mark a layer for He (Kaiming-normal, ReLU gain) initialisation; see `AutoencoderModel._init_weights`."""
    layer.he_init = True
    return layer


def _dense(sizes: Sequence[int], act_fn: str, final_activation: bool) -> nn.Sequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(_he(nn.Linear(fan_in, fan_out)))
        if final_activation or i < len(sizes) - 2:
            layers.append(get_activation(act_fn))
    return nn.Sequential(*layers)


class BurgessEncoder(nn.Module):
    """(B, C, H, W) [+ condition (B, c)] -> (B, out_features)."""

    def __init__(self, in_channels: int, image_size: int, block_out_channels: Sequence[int],
                 hidden_dims: Sequence[int], out_features: int, act_fn: str = "relu", condition_dim: int = 0):
        super().__init__()
        layers, channels = [], in_channels + condition_dim
        for out in block_out_channels:
            layers += [_he(nn.Conv2d(channels, out, kernel_size=4, stride=2, padding=1)), get_activation(act_fn)]
            channels = out
        self.convs = nn.Sequential(*layers)
        side = image_size // 2 ** len(block_out_channels)
        self.dense = _dense([channels * side * side, *hidden_dims, out_features], act_fn, final_activation=False)

    def forward(self, x: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if condition is not None:
            b, _, h, w = x.shape
            x = torch.cat([x, condition.to(x.dtype)[:, :, None, None].expand(b, -1, h, w)], dim=1)
        return self.dense(self.convs(x).flatten(1))


class BurgessDecoder(nn.Module):
    """(..., latent_dim) [+ condition (B, c)] -> (..., C, H, W); the mirror of `BurgessEncoder`."""

    def __init__(self, out_channels: int, image_size: int, block_out_channels: Sequence[int],
                 hidden_dims: Sequence[int], latent_dim: int, act_fn: str = "relu", condition_dim: int = 0):
        super().__init__()
        self.side = image_size // 2 ** len(block_out_channels)
        self.channels = block_out_channels[-1]
        self.dense = _dense([latent_dim + condition_dim, *reversed(hidden_dims), self.channels * self.side ** 2],
                            act_fn, final_activation=True)
        layers = []
        widths = list(reversed(block_out_channels)) + [out_channels]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(_he(nn.ConvTranspose2d(fan_in, fan_out, kernel_size=4, stride=2, padding=1)))
            if i < len(widths) - 2:
                layers.append(get_activation(act_fn))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if condition is not None:
            z = torch.cat([z, condition.to(z.dtype).expand(*z.shape[:-1], -1)], dim=-1)
        lead = z.shape[:-1]  # a stack of samples (K, B, D) decodes as one batch
        h = self.dense(z.reshape(math.prod(lead), z.shape[-1]))
        x = self.deconvs(h.view(-1, self.channels, self.side, self.side))
        return x.view(*lead, *x.shape[1:])
