"""The optimisers, their learning-rate schedule and the averaged loss terms the loop logs."""

from __future__ import annotations

import math
from typing import Dict, List

import torch

from .training_args import TrainArguments


def resolved_warmup_steps(train_args: TrainArguments, max_steps: int) -> int:
    """--warmup_steps, or 5 % of the run when it is not given."""
    return train_args.warmup_steps if train_args.warmup_steps is not None else max_steps // 20


def lr_lambda(warmup_steps: int, max_steps: int, schedule: str, min_ratio: float):
    """Linear warm-up from 0 to 1, then cosine decay to `min_ratio` (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def adam(params: List[torch.nn.Parameter], lr: float, betas, weight_decay: float, device: torch.device):
    # Fused Adam is faster and exact on CPU and CUDA (one kernel per step instead of one per tensor).
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


class LossWindow:
    """Sums of the loss terms since the last log line."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, logs: Dict[str, torch.Tensor]) -> None:
        for key, value in logs.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def means(self, accelerator) -> Dict[str, float]:
        if not self.count:
            return {}
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] / self.count for k in keys]).to(accelerator.device)
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        self.sums, self.count = {}, 0
        return dict(zip(keys, values.tolist()))
