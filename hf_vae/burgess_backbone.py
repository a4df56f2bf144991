"""The convolutional β-VAE architecture of Burgess et al. (2018), "Understanding disentangling in β-VAE",
appendix A.1 (also Locatello et al. 2019's disentanglement_lib "conv" encoder/decoder).

Encoder: stride-2 4x4 convolutions (`block_out_channels`, 32 each in the paper: 64x64 -> 4x4), ReLU, then fully
connected layers (`hidden_dims`, 256 and 256 in the paper) and a linear layer to the posterior parameters.
Decoder: the transpose, with 4x4 stride-2 transposed convolutions back to the image.

Plain convolutions, no normalisation: about 30 MFLOP per 64x64 image forward, some 20x less than the ResNet
blocks of `conv_backbone` at the same resolution, which makes it the architecture of choice for dSprites-like
data on a CPU. A condition vector (the CVAE) is broadcast as extra input channels of the encoder and
concatenated to the latent of the decoder.

With `local_latent_channels` = C > 0 the network is a two-level VAE. Under the vector latent z_global it has a
spatial one, z_local (C, s, s), at the resolution s of the last-but-one convolution (8x8 for 64x64 images). The
encoder reads q(z_local|x) from its features at that resolution, and the decoder adds z_local to its own features
there. The decoder also computes the conditional prior p(z_local|z_global) from those features before the
addition, as the top-down priors of NVAE (Vahdat & Kautz 2020) do. The latent vector is
z = (z_global, z_local.flatten()). A single global latent has to learn a square's orientation before the
decoder can draw its corners, and on shapes even 5x the default budget is not enough. A local latent holds the
corners where they are.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .conv_backbone import CheckpointedSequential, get_activation


def _he(layer: nn.Module) -> nn.Module:
    """Mark a layer for He (Kaiming-normal, ReLU gain) initialisation; see `weight_init.init_weights`."""
    layer.he_init = True
    return layer


def _dense(sizes: Sequence[int], act_fn: str, final_activation: bool) -> CheckpointedSequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(_he(nn.Linear(fan_in, fan_out)))
        if final_activation or i < len(sizes) - 2:
            layers.append(get_activation(act_fn))
    return CheckpointedSequential(*layers)


def _local_head(channels: int, out_channels: int, act_fn: str) -> nn.Sequential:
    """Two 3x3 convolutions at the local latent's resolution: features -> mean and log-variance (2C channels)."""
    return nn.Sequential(_he(nn.Conv2d(channels, channels, 3, padding=1)), get_activation(act_fn),
                         _he(nn.Conv2d(channels, out_channels, 3, padding=1)))


class BurgessEncoder(nn.Module):
    """(B, C, H, W) [+ condition (B, c)] -> (B, out_features), or (B, out_features + 2·C_local·s²) with a local
    latent: [global mean, local mean, global log-variance, local log-variance], the layout of
    `DiagonalGaussianDistribution` over the flat latent (z_global, z_local)."""

    def __init__(self, in_channels: int, image_size: int, block_out_channels: Sequence[int],
                 hidden_dims: Sequence[int], out_features: int, act_fn: str = "relu", condition_dim: int = 0,
                 local_latent_channels: int = 0):
        super().__init__()
        layers, channels = [], in_channels + condition_dim
        for out in block_out_channels:
            layers += [_he(nn.Conv2d(channels, out, kernel_size=4, stride=2, padding=1)), get_activation(act_fn)]
            channels = out
        self.convs = CheckpointedSequential(*layers)
        side = image_size // 2 ** len(block_out_channels)
        self.dense = _dense([channels * side * side, *hidden_dims, out_features], act_fn, final_activation=False)
        self.local_latent_channels = local_latent_channels
        if local_latent_channels:
            self.local_head = _local_head(block_out_channels[-2], 2 * local_latent_channels, act_fn)

    def hidden_stages(self):
        """Each convolution's and dense layer's activation."""
        return [*self.convs.hidden_stages(), *self.dense.hidden_stages()]

    def forward(self, x: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if condition is not None:
            b, _, h, w = x.shape
            x = torch.cat([x, condition.to(x.dtype)[:, :, None, None].expand(b, -1, h, w)], dim=1)
        if not self.local_latent_channels:
            return self.dense(self.convs(x).flatten(1))
        features = self.convs[:-2](x)  # at the last-but-one resolution s
        global_mean, global_logvar = self.dense(self.convs[-2:](features).flatten(1)).chunk(2, dim=1)
        local_mean, local_logvar = self.local_head(features).flatten(2).chunk(2, dim=1)  # (B, C, s²) each
        return torch.cat([global_mean, local_mean.flatten(1), global_logvar, local_logvar.flatten(1)], dim=1)


class BurgessDecoder(nn.Module):
    """(..., latent_dim [+ C_local·s²]) [+ condition (B, c)] -> (..., C, H, W); the mirror of `BurgessEncoder`.

    With a local latent, `local_prior(z_global)` gives the mean and log-variance of p(z_local | z_global).
    """

    def __init__(self, out_channels: int, image_size: int, block_out_channels: Sequence[int],
                 hidden_dims: Sequence[int], latent_dim: int, act_fn: str = "relu", condition_dim: int = 0,
                 local_latent_channels: int = 0):
        super().__init__()
        self.side = image_size // 2 ** len(block_out_channels)
        self.channels = block_out_channels[-1]
        self.latent_dim = latent_dim
        self.dense = _dense([latent_dim + condition_dim, *reversed(hidden_dims), self.channels * self.side ** 2],
                            act_fn, final_activation=True)
        layers = []
        widths = list(reversed(block_out_channels)) + [out_channels]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(_he(nn.ConvTranspose2d(fan_in, fan_out, kernel_size=4, stride=2, padding=1)))
            if i < len(widths) - 2:
                layers.append(get_activation(act_fn))
        self.deconvs = CheckpointedSequential(*layers)
        self.local_latent_channels = local_latent_channels
        if local_latent_channels:
            self.local_prior_head = _local_head(widths[1], 2 * local_latent_channels, act_fn)
            self.local_in = _he(nn.Conv2d(local_latent_channels, widths[1], 3, padding=1))
            self.local_act = get_activation(act_fn)

    def _top(self, z_global: torch.Tensor, condition: Optional[torch.Tensor]) -> torch.Tensor:
        """(N, latent_dim) [+ condition (N, c)] -> the features at the first up-sampled resolution (the local
        latent's, with one)."""
        if condition is not None:
            z_global = torch.cat([z_global, condition], dim=-1)
        h = self.dense(z_global).view(-1, self.channels, self.side, self.side)
        return self.deconvs[:2](h)

    def local_prior(self, z_global: torch.Tensor):
        """(..., latent_dim) -> mean and log-variance of p(z_local | z_global), each (..., C_local·s²)."""
        lead = z_global.shape[:-1]
        params = self.local_prior_head(self._top(z_global.reshape(-1, self.latent_dim), None))
        mean, logvar = params.flatten(2).chunk(2, dim=1)
        # clamped like the posterior's (DiagonalGaussianDistribution), so that exp() stays finite in fp16
        return mean.reshape(*lead, -1), logvar.clamp(-30.0, 20.0).reshape(*lead, -1)

    def hidden_stages(self):
        """Each dense layer's and transposed convolution's activation."""
        return [*self.dense.hidden_stages(), *self.deconvs.hidden_stages()]

    def forward(self, z: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = z.shape[:-1]  # a stack of samples (K, B, D) decodes as one batch
        if condition is not None:  # (B, c) -> (K·B, c)
            condition = condition.to(z.dtype).expand(*lead, -1).reshape(math.prod(lead), -1)
        z = z.reshape(math.prod(lead), z.shape[-1])
        h = self._top(z[:, :self.latent_dim], condition)
        if self.local_latent_channels:
            z_local = z[:, self.latent_dim:].view(-1, self.local_latent_channels, *h.shape[-2:])
            h = self.local_act(h + self.local_in(z_local))
        x = self.deconvs[2:](h)
        return x.view(*lead, *x.shape[1:])
