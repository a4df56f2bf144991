"""Convolutional encoder and decoder with the block structure of diffusers' `Encoder`/`Decoder`.

The modules and their attribute names mirror diffusers' `vae.py` (`conv_in`, `down_blocks.{i}.resnets.{j}`,
`down_blocks.{i}.downsamplers.0.conv`, `mid_block.attentions.0.to_q`, `conv_norm_out`, `conv_out`, ...) so that
a state dict moves between `KLAEModel` and diffusers' `AutoencoderKL` without renaming, and the arithmetic is
the same operation for operation (so outputs agree to float rounding).

Two things differ from diffusers, both invisible in the results:
  * under `torch.no_grad()` activations and residual adds run in place, which saves a large temporary per
    layer (page faults are a measurable share of CPU time for this network);
  * gradient checkpointing is per block, switched on through transformers' `activation_checkpointing_enable`.

`ConvEncoder`/`ConvDecoder` wrap the diffusers-shaped bodies for the other variants: they add an optional
dense bottleneck (a vector latent, as in Burgess et al. 2018's β-VAE) and broadcast a condition vector as
extra input channels (the CVAE).
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "mish": nn.Mish}


def get_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"Expected act_fn in {sorted(ACTIVATIONS)}, got {name!r}.")
    return ACTIVATIONS[name]()


def _activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # In inference nothing needs the pre-activation tensor, so overwrite it instead of allocating another.
    if not torch.is_grad_enabled() and isinstance(act, nn.SiLU):
        return F.silu(x, inplace=True)
    return act(x)


def _add_residual(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return x.add_(residual)
    return x + residual


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv3x3 -> GroupNorm -> act -> dropout -> conv3x3, plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, eps: float = 1e-6,
                 act_fn: str = "silu", dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(act_fn)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_activate(self.nonlinearity, self.norm1(x)))
        h = self.conv2(self.dropout(_activate(self.nonlinearity, self.norm2(h))))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return _add_residual(h, shortcut)


class Downsample2D(nn.Module):
    """3x3 stride-2 conv after padding one pixel on the right and bottom only (latent-diffusion's layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x up-sampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest interpolation has no bf16 kernel on some backends
            x = x.float()
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x.to(dtype))


class Attention(nn.Module):
    """Single-head spatial self-attention with a residual connection (diffusers' `Attention` as the VAE uses it).

    (B, C, H, W) -> GroupNorm -> tokens (B, HW, C) -> q, k, v (Linear) -> softmax(qkᵀ/√C)v -> Linear -> + x.
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q = self.to_q(tokens).unsqueeze(1)
        k = self.to_k(tokens).unsqueeze(1)
        v = self.to_v(tokens).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False).squeeze(1)
        out = self.to_out[1](self.to_out[0](out))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return _add_residual(out, x)


class UNetMidBlock2D(nn.Module):
    """resnet -> (attention) -> resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, act_fn: str, add_attention: bool = True, dropout: float = 0.0):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(channels, channels, groups, act_fn=act_fn, dropout=dropout),
            ResnetBlock2D(channels, channels, groups, act_fn=act_fn, dropout=dropout),
        ])
        self.attentions = nn.ModuleList([Attention(channels, groups) if add_attention else nn.Identity()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, num_layers, groups, act_fn, add_downsample, dropout=0.0):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act_fn=act_fn, dropout=dropout)
            for i in range(num_layers)
        ])
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, num_layers, groups, act_fn, add_upsample, dropout=0.0):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act_fn=act_fn, dropout=dropout)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class _CheckpointedBlocks(nn.Module):
    """Runs each block through `self._gradient_checkpointing_func` when transformers switches it on."""

    gradient_checkpointing = False

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled() and self.training:
            return self._gradient_checkpointing_func(block.__call__, x)
        return block(x)


class Encoder(_CheckpointedBlocks):
    """(B, in_channels, H, W) -> (B, out_channels · (2 if double_z else 1), H/f, W/f), f = 2^(len(blocks)-1)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 4, block_out_channels: Sequence[int] = (64,),
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu", double_z: bool = True,
                 mid_block_add_attention: bool = True, dropout: float = 0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            input_channel, output_channel = output_channel, channels
            self.down_blocks.append(DownEncoderBlock2D(
                input_channel, output_channel, layers_per_block, norm_num_groups, act_fn,
                add_downsample=i < len(block_out_channels) - 1, dropout=dropout,
            ))
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, act_fn, mid_block_add_attention, dropout)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = self._run(block, x)
        x = self._run(self.mid_block, x)
        return self.conv_out(_activate(self.conv_act, self.conv_norm_out(x)))


class Decoder(_CheckpointedBlocks):
    """(B, in_channels, h, w) -> (B, out_channels, h·f, w·f); the encoder mirrored, layers_per_block + 1 resnets."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, block_out_channels: Sequence[int] = (64,),
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 mid_block_add_attention: bool = True, dropout: float = 0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, act_fn, mid_block_add_attention, dropout)
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, channels in enumerate(reversed_channels):
            prev_output_channel, output_channel = output_channel, channels
            self.up_blocks.append(UpDecoderBlock2D(
                prev_output_channel, output_channel, layers_per_block + 1, norm_num_groups, act_fn,
                add_upsample=i < len(block_out_channels) - 1, dropout=dropout,
            ))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        upscale_dtype = self.up_blocks[0].resnets[0].conv1.weight.dtype
        x = self._run(self.mid_block, x).to(upscale_dtype)
        for block in self.up_blocks:
            x = self._run(block, x)
        return self.conv_out(_activate(self.conv_act, self.conv_norm_out(x)))


def _broadcast_condition(x: torch.Tensor, condition: Optional[torch.Tensor]) -> torch.Tensor:
    """Concatenate a (B, c) condition to a (B, C, H, W) map as c constant channels."""
    if condition is None:
        return x
    b, _, h, w = x.shape
    return torch.cat([x, condition.to(x.dtype)[:, :, None, None].expand(b, -1, h, w)], dim=1)


class ConvEncoder(nn.Module):
    """Image -> posterior parameters.

    Spatial latent (latent_dim None): (B, C, H, W) -> (B, out_channels, H/f, W/f).
    Vector latent (latent_dim set):   (B, C, H, W) -> conv features (B, latent_channels, H/f, W/f) -> flatten ->
    Linear -> (B, out_features).
    """

    def __init__(self, in_channels: int, image_size: Optional[int], block_out_channels: Sequence[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool,
                 latent_channels: int, out_features: int, vector_latent: bool, condition_dim: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.vector_latent = vector_latent
        self.body = Encoder(
            in_channels + condition_dim, latent_channels if vector_latent else out_features, block_out_channels,
            layers_per_block, norm_num_groups, act_fn, double_z=False, mid_block_add_attention=mid_block_add_attention,
            dropout=dropout,
        )
        if vector_latent:
            side = image_size // 2 ** (len(block_out_channels) - 1)
            self.to_latent = nn.Linear(latent_channels * side * side, out_features)

    def forward(self, x: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.body(_broadcast_condition(x, condition))
        return self.to_latent(h.flatten(1)) if self.vector_latent else h


class ConvDecoder(nn.Module):
    """Latent (and condition) -> decoder parameters (B, out_channels, H, W); the mirror of `ConvEncoder`."""

    def __init__(self, out_channels: int, image_size: Optional[int], block_out_channels: Sequence[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool,
                 latent_channels: int, latent_dim: Optional[int], condition_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.latent_channels = latent_channels
        self.vector_latent = latent_dim is not None
        if self.vector_latent:
            self.side = image_size // 2 ** (len(block_out_channels) - 1)
            self.from_latent = nn.Linear(latent_dim + condition_dim, latent_channels * self.side * self.side)
            body_in = latent_channels
        else:
            body_in = latent_channels + condition_dim
        self.body = Decoder(body_in, out_channels, block_out_channels, layers_per_block, norm_num_groups, act_fn,
                            mid_block_add_attention=mid_block_add_attention, dropout=dropout)

    def forward(self, z: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.vector_latent:
            if condition is not None:
                z = torch.cat([z, condition.to(z.dtype)], dim=1)
            h = self.from_latent(z).view(z.shape[0], self.latent_channels, self.side, self.side)
            return self.body(h)
        return self.body(_broadcast_condition(z, condition))


def downsampling_factor(block_out_channels: Sequence[int]) -> int:
    return 2 ** (len(block_out_channels) - 1)
