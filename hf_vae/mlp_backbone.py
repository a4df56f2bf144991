"""Fully connected encoder and decoder, for flat data or images flattened to vectors.

The encoder is Linear-act blocks ending in a Linear to the posterior parameters; the decoder mirrors the
hidden sizes. A condition vector (the CVAE's class embedding) is concatenated to the input of both.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .conv_backbone import CheckpointedSequential, get_activation


def _mlp(sizes: Sequence[int], act_fn: str) -> CheckpointedSequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(get_activation(act_fn))
    return CheckpointedSequential(*layers)


class MLPEncoder(nn.Module):
    """(B, *data_shape) [+ condition (B, c)] -> (B, out_features)."""

    def __init__(self, data_shape: Sequence[int], hidden_dims: Sequence[int], out_features: int,
                 act_fn: str = "relu", condition_dim: int = 0):
        super().__init__()
        self.net = _mlp([math.prod(data_shape) + condition_dim, *hidden_dims, out_features], act_fn)

    def hidden_stages(self):
        return self.net.hidden_stages()

    def forward(self, x: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x.flatten(1)
        if condition is not None:
            h = torch.cat([h, condition.to(h.dtype)], dim=1)
        return self.net(h)


class MLPDecoder(nn.Module):
    """(B, latent_dim) [+ condition (B, c)] -> (B, *data_shape); also accepts (..., latent_dim) stacks."""

    def __init__(self, data_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int,
                 act_fn: str = "relu", condition_dim: int = 0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.net = _mlp([latent_dim + condition_dim, *reversed(hidden_dims), math.prod(data_shape)], act_fn)

    def hidden_stages(self):
        return self.net.hidden_stages()

    def forward(self, z: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if condition is not None:
            z = torch.cat([z, condition.to(z.dtype).expand(*z.shape[:-1], -1)], dim=-1)
        return self.net(z).view(*z.shape[:-1], *self.data_shape)
