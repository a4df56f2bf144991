"""A gated PixelCNN over code maps (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): the network of the PixelCNN code prior (hf_vae.modeling_vq_prior, `prior_type="pixelcnn"`).

    p(z) = Π_i p(z_i | z_<i, c),   z = an h×w code map in raster order (row by row, left to right)

Two stacks of causal convolutions remove the original PixelCNN's blind spot (paper, sec. 2.2 and Fig. 1):

- the vertical stack at row r sees every code in the rows above r (a (k//2+1)×k kernel over rows r−k//2 … r of
  its own features, which, shifted down one row at the input, hold only rows < r);
- the horizontal stack at (r, c) sees the codes left of c in row r (a 1×(k//2+1) kernel over columns
  c−k//2 … c of its own features, shifted right one column at the input) and, through a 1×1 convolution, the
  vertical stack at row r.

Causality is by padding and the one-position input shifts, not by masked weights (equivalent to the paper's "A"
mask on the first layer and "B" masks after it). Each layer is the paper's gated unit (eq. 4, with the class
embedding of eq. 5 as a bias of both stacks):

    y = tanh(W_f ∗ x + V_f h) ⊙ σ(W_g ∗ x + V_g h)

and the horizontal stack is residual. A code map of shape (n,) (an MLP VQ-VAE) is one row of n codes.

This file is a model file: it imports only torch.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same map moved one row down, a row of zeros on top: row r then holds row r − 1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same map moved one column right, zeros on the left: column c then holds column c − 1."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    """The gated activation of eq. 4: tanh of the first half of the channels times the sigmoid of the second."""
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (paper, Fig. 2); causal for inputs already shifted (see the module doc)."""

    def __init__(self, channels: int, kernel_size: int, num_classes: Optional[int]):
        super().__init__()
        self.half = kernel_size // 2
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        # V h of eq. 5: a per-class bias of the gates, the same for both stacks
        self.class_bias = nn.Embedding(num_classes, 2 * channels) if num_classes else None

    def forward(self, vertical: torch.Tensor, horizontal: torch.Tensor, labels: Optional[torch.Tensor]):
        # Padding only above (vertical) and only on the left (horizontal): output (r, c) reads rows ≤ r and
        # columns ≤ c of the inputs.
        v = self.vertical(F.pad(vertical, (self.half, self.half, self.half, 0)))
        h = self.horizontal(F.pad(horizontal, (self.half, 0, 0, 0))) + self.vertical_to_horizontal(v)
        if self.class_bias is not None:
            bias = self.class_bias(labels)[:, :, None, None]
            v, h = v + bias, h + bias
        return gate(v), horizontal + self.horizontal_out(gate(h))


class GatedPixelCNN(nn.Module):
    """Logits of p(z_i | z_<i, c) for every position of an h×w code map.

    Args:
        num_embeddings: the codebook size K (the logits' classes).
        channels: width of both stacks.
        num_layers: gated layers.
        kernel_size: kernel of every layer but the first (odd).
        first_kernel_size: kernel of the first layer (odd; the paper's 7×7).
        num_classes: classes of a class-conditional prior, None for an unconditional one.
    """

    def __init__(self, num_embeddings: int, channels: int, num_layers: int, kernel_size: int = 3,
                 first_kernel_size: int = 7, num_classes: Optional[int] = None):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels, first_kernel_size if i == 0 else kernel_size, num_classes) for i in range(num_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, num_embeddings, 1))

    def forward(self, codes: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, h, w) integer codes -> (B, K, h, w) logits; position (r, c) depends only on the codes before it."""
        return self.logits(self.embedding(codes).permute(0, 3, 1, 2), labels)

    def logits(self, embedded: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, channels, h, w) embedded codes -> (B, K, h, w) logits (the input of the receptive-field test)."""
        vertical, horizontal = shift_down(embedded), shift_right(embedded)
        for layer in self.layers:
            vertical, horizontal = layer(vertical, horizontal, labels)
        return self.head(horizontal)
