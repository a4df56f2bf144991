"""An exponential moving average of a model's weights (Polyak averaging).

    shadow ← d · shadow + (1 − d) · weights,     d = min(decay, (1 + n) / (10 + n)) after n updates

The warm-up of d (as in diffusers' EMAModel) keeps the first averages from being dominated by the random
initialisation. Only parameters are averaged; buffers (BatchNorm statistics, the VQ-EMA codebook sums) are
taken from the live model when the average is copied out, since they are averages or counters already.
The object has `state_dict` / `load_state_dict`, which the trainer's checkpoints save (safetensors) and resume.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"Expected an EMA decay in (0, 1), got {decay!r}.")
        self.decay = float(decay)
        self.num_updates = 0
        named = [(name, p) for name, p in model.named_parameters()]
        self.names = [name for name, _ in named]
        self.shadow = [p.detach().clone().float() for _, p in named]

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimiser step)."""
        params = [p.detach().float() for p in model.parameters()]
        if len(params) != len(self.shadow):
            raise ValueError(f"Expected a model with {len(self.shadow)} parameters (the one the EMA was built "
                             f"from), got {len(params)}.")
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, params, weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averaged ones."""
        for p, s in zip(model.parameters(), self.shadow):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> Dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {name: s for name, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: Dict) -> None:
        shadow = state["shadow"]
        missing = [n for n in self.names if n not in shadow]
        if missing:
            raise ValueError(f"EMA state is missing parameters {missing[:5]}{'...' if len(missing) > 5 else ''}: "
                             f"expected the weights of the model being trained.")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(shadow[name])
