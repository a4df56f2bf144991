"""The MLP discriminator of pythae's adversarial families (its `Discriminator_MLP`), trained alongside the model.

    flatten -> [Linear -> ReLU] per hidden size -> Linear -> one logit

pythae ends with a sigmoid and a binary cross-entropy on the probability; here the discriminator returns the logit
and the losses take log-sigmoids of it (the same function, without the rounding of a probability near 0 or 1).
Layers are numbered as pythae numbers them, from 1: hidden layer k is layer k, and layer depth = len(hidden) + 1
is the output, whose "features" are the probability D(x) itself.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn


class MLPDiscriminator(nn.Module):
    def __init__(self, in_features: int, hidden_dims: Sequence[int] = (256,)):
        super().__init__()
        layers, width = [], in_features
        for hidden in hidden_dims:
            layers.append(nn.Sequential(nn.Linear(width, hidden), nn.ReLU()))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.layers = nn.ModuleList(layers)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor, feature_layer: Optional[int] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, ...) -> (logits (B,), the output of layer `feature_layer` (B, F), or None when not asked)."""
        out, features = x.flatten(1), None
        for index, layer in enumerate(self.layers, start=1):
            out = layer(out)
            if index == feature_layer:
                features = out
        logits = out.squeeze(-1)
        if feature_layer == self.depth:
            features = torch.sigmoid(out)  # pythae's last layer ends with its sigmoid
        return logits, features
