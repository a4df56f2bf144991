"""Convolutional encoder and decoder with the block structure of diffusers' `Encoder`/`Decoder`.

The modules and their attribute names mirror diffusers' `vae.py` (`conv_in`, `down_blocks.{i}.resnets.{j}`,
`down_blocks.{i}.downsamplers.0.conv`, `mid_block.attentions.0.to_q`, `conv_norm_out`, `conv_out`, ...) so that
a state dict moves between `KLAEModel` and diffusers' `AutoencoderKL` without renaming, and the arithmetic is
the same operation for operation (so outputs agree to float rounding).

Two things differ from diffusers, both invisible in the results:
  * under `torch.no_grad()` activations and residual adds run in place, which saves a large temporary per
    layer (page faults are a measurable share of CPU time for this network);
  * gradient checkpointing is per block (`GradientCheckpointingLayer`), switched on through transformers'
    `gradient_checkpointing_enable`.

`ConvEncoder`/`ConvDecoder` wrap the diffusers-shaped bodies for the other variants: they add an optional
dense bottleneck (a vector latent, as in Burgess et al. 2018's β-VAE) and broadcast a condition vector as
extra input channels (the CVAE).
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # transformers >= 4.52: checkpointing switched on per layer by `gradient_checkpointing_enable()`
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older transformers

    class GradientCheckpointingLayer(nn.Module):
        """transformers' `GradientCheckpointingLayer`, for releases that lack it: calls `forward` through
        `_gradient_checkpointing_func` when `gradient_checkpointing` is on in a training pass with autograd."""

        gradient_checkpointing = False

        def __call__(self, *args, **kwargs):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                return self._gradient_checkpointing_func(super().__call__, *args, **kwargs)
            return super().__call__(*args, **kwargs)


class CheckpointedSequential(GradientCheckpointingLayer, nn.Sequential):
    """An `nn.Sequential` (same state-dict keys) that is one gradient-checkpointing unit: the fully connected
    stacks of the MLP and Burgess backbones."""

    def hidden_stages(self):
        """The activations: each hidden layer's output."""
        return [module for module in self if isinstance(module, tuple(ACTIVATIONS.values()))]


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


def _add_residual(first: torch.Tensor, second: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """first + second, with the operands in diffusers' order.

    The order matters when the two have different memory layouts (a 1x1 conv can return channels-last): the
    result takes the layout the operands imply, and later GroupNorms round differently on another layout. In
    inference, when both share dtype and strides, the sum is written into `scratch` (one of the two, a temporary
    nothing else reads) instead of a new tensor: same values, same layout, one large allocation fewer.
    """
    if (not torch.is_grad_enabled() and first.dtype == second.dtype and first.shape == second.shape
            and first.stride() == second.stride()):
        return scratch.add_(second if scratch is first else first)
    return first + second


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
        # One statement per step, so each intermediate is freed as soon as the next exists (a nested expression
        # keeps the conv1 output alive through conv2: one extra full-size tensor at the memory peak).
        h = self.norm1(x)
        h = _activate(self.nonlinearity, h)
        h = self.conv1(h)
        h = self.norm2(h)
        h = _activate(self.nonlinearity, h)
        h = self.dropout(h)
        h = self.conv2(h)
        if self.conv_shortcut is not None:
            # diffusers makes the shortcut input contiguous in training (DDP warns about gradient strides
            # otherwise); a channels-last input then takes another conv kernel, so do the same to stay bit-exact.
            shortcut = self.conv_shortcut(x.contiguous() if self.training else x)
        else:
            shortcut = x
        return _add_residual(shortcut, h, scratch=h)


class Downsample2D(nn.Module):
    """3x3 stride-2 conv after padding one pixel on the right and bottom only (latent-diffusion's layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


# Which of the 3 kernel taps land on each of the 2 distinct input rows, for output row parity 0 and 1 (see below).
_SUBPIXEL_FOLD = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _subpixel_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) kernel of "nearest 2x up-sample, then 3x3 conv (padding 1)" -> (4·O, I, 2, 2) kernels of the
    equivalent convolution on the low-resolution input, one per output phase (row parity a, column parity b),
    stacked in the order (0, 0), (0, 1), (1, 0), (1, 1).

    Output row 2i + a of the up-sampled conv reads up-sampled rows 2i + a − 1, 2i + a, 2i + a + 1, i.e. input rows
    (i − 1, i, i) for a = 0 and (i, i, i + 1) for a = 1: two distinct rows, whose kernel rows are
    (w0, w1 + w2) and (w0 + w1, w2) (`_SUBPIXEL_FOLD`). Columns work the same way.
    """
    fold = torch.tensor(_SUBPIXEL_FOLD, dtype=weight.dtype, device=weight.device)  # (parity, 2 taps, 3 taps)
    kernel = torch.einsum("ayk,bxl,oikl->aboiyx", fold, fold, weight)
    return kernel.reshape(4 * weight.shape[0], weight.shape[1], 2, 2)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x up-sampling followed by a 3x3 conv.

    With `subpixel = True` the same function is computed without materialising the up-sampled tensor: four 2x2
    convolutions on the input (one per output pixel phase, `_subpixel_kernel`) whose outputs are interleaved.
    That is 4·4 instead of 9 multiply-adds per output per input channel (44 % fewer FLOPs in this layer, which
    has the most channels at the highest resolutions). The weights and their gradients are unchanged; the sums
    are grouped differently, so results agree with the default path to float rounding (~1e-7 relative), not bit
    for bit, which is why it is opt-in (`KLAEModel.enable_subpixel_upsampling`).
    """

    subpixel = False

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def _subpixel_parameters(self):
        weight, bias = self.conv.weight, self.conv.bias
        if torch.is_grad_enabled():  # differentiable: gradients reach the 3x3 weight
            return _subpixel_kernel(weight), None if bias is None else bias.repeat(4)
        # In inference, reuse the folded kernel until the weight changes (in-place updates bump `_version`).
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device,
               None if bias is None else (bias.data_ptr(), bias._version))
        cached = getattr(self, "_subpixel_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, _subpixel_kernel(weight), None if bias is None else bias.repeat(4))
            self._subpixel_cache = cached
        return cached[1], cached[2]

    def _forward_subpixel(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        out_channels = self.conv.out_channels
        kernel, bias = self._subpixel_parameters()
        # One conv with 4·O outputs over the input padded by 1: phase (a, c) is its window [a : a + h, c : c + w].
        phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernel.to(x.dtype), None if bias is None else bias.to(x.dtype))
        phases = phases.view(b, 2, 2, out_channels, h + 1, w + 1)
        if torch.is_grad_enabled():
            rows = [torch.stack([phases[:, a, c, :, a:a + h, c:c + w] for c in (0, 1)], dim=-1) for a in (0, 1)]
            return torch.stack(rows, dim=3).reshape(b, out_channels, 2 * h, 2 * w)
        out = x.new_empty(b, out_channels, h, 2, w, 2)
        for a in (0, 1):
            for c in (0, 1):
                out[:, :, :, a, :, c] = phases[:, a, c, :, a:a + h, c:c + w]
        return out.view(b, out_channels, 2 * h, 2 * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subpixel and x.dtype != torch.bfloat16:
            return self._forward_subpixel(x)
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
        #: "sdpa" (PyTorch's fused kernels) or "eager"; the model sets it from `config._attn_implementation`
        self.implementation = "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # Normalise the (B, C, HW) view, as diffusers does: for an input in channels-last memory (the layout a 1x1
        # conv can return) GroupNorm on the 4-D tensor takes another kernel and rounds differently.
        tokens = self.group_norm(x.view(b, c, h * w)).transpose(1, 2)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        if self.implementation == "eager":  # softmax(q kᵀ / √C) v written out (Vaswani et al. 2017, eq. 1)
            weights = torch.softmax(torch.baddbmm(q.new_zeros(()), q, k.transpose(1, 2), alpha=c ** -0.5), dim=-1)
            out = torch.bmm(weights.to(v.dtype), v)
        else:
            out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        out = self.to_out[1](self.to_out[0](out))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return _add_residual(out, x, scratch=out)


class UNetMidBlock2D(GradientCheckpointingLayer):
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


class DownEncoderBlock2D(GradientCheckpointingLayer):
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


class UpDecoderBlock2D(GradientCheckpointingLayer):
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


class Encoder(nn.Module):
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

    def hidden_stages(self):
        """The modules whose outputs are the encoder's hidden states: each down block, then the mid block."""
        return [*self.down_blocks, self.mid_block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        x = self.conv_norm_out(x)  # (reassigned step by step so the pre-norm map is freed before conv_out)
        return self.conv_out(_activate(self.conv_act, x))


class Decoder(nn.Module):
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

    def hidden_stages(self):
        """The modules whose outputs are the decoder's hidden states: the mid block, then each up block."""
        return [self.mid_block, *self.up_blocks]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        upscale_dtype = self.up_blocks[0].resnets[0].conv1.weight.dtype
        x = self.mid_block(x).to(upscale_dtype)
        for block in self.up_blocks:
            x = block(x)
        x = self.conv_norm_out(x)  # (reassigned so the full-resolution pre-norm map is freed before conv_out)
        return self.conv_out(_activate(self.conv_act, x))


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

    def hidden_stages(self):
        return self.body.hidden_stages()

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

    def hidden_stages(self):
        return self.body.hidden_stages()

    def forward(self, z: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.vector_latent:
            if condition is not None:
                z = torch.cat([z, condition.to(z.dtype)], dim=1)
            h = self.from_latent(z).view(z.shape[0], self.latent_channels, self.side, self.side)
            return self.body(h)
        return self.body(_broadcast_condition(z, condition))


def downsampling_factor(block_out_channels: Sequence[int]) -> int:
    return 2 ** (len(block_out_channels) - 1)
