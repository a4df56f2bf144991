"""Image grids as PNG files, without torchvision.

    make_grid(images, nrow)                  (N, C, H, W) -> one (C, H', W') tensor, images tiled row by row
    save_image_grid(images, path, ...)       the same, mapped from `value_range` to 8-bit and written as PNG
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Tile (N, C, H, W) images into one (C, rows·(H+p)+p, nrow·(W+p)+p) image, `nrow` images per row.

    Flat (N, D) data cannot be tiled: the caller reshapes it first.
    """
    if images.dim() != 4:
        raise ValueError(f"Expected images of shape (N, C, H, W), got {tuple(images.shape)}.")
    if nrow <= 0:
        raise ValueError(f"Expected a positive `nrow`, got {nrow}.")
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = math.ceil(n / ncol)
    grid = images.new_full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top: top + h, left: left + w] = images[i]
    return grid


def save_image_grid(images: torch.Tensor, path: str, nrow: int = 8, value_range: Sequence[float] = (0.0, 1.0),
                    padding: int = 2) -> str:
    """Write (N, C, H, W) images in `value_range` as one PNG grid (greyscale for C = 1, RGB for C = 3).

    Values outside the range are clipped. The file is written under a temporary name and renamed, so a reader
    never sees half a PNG. Returns `path`.
    """
    from PIL import Image

    lo, hi = float(value_range[0]), float(value_range[1])
    images = images.detach().float().cpu()
    if images.shape[1] not in (1, 3):
        raise ValueError(f"Expected 1 or 3 channels to save as PNG, got shape {tuple(images.shape)}.")
    # Pad with the range's midpoint so the grid lines are visible on both black and white images.
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=(lo + hi) / 2)
    grid = ((grid - lo) / (hi - lo)).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    array = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).contiguous().numpy()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def class_sample_labels(num_classes: int, num_samples: int, device=None, per_row: int = 0) -> torch.Tensor:
    """The class labels of a grid of class-conditional samples: the classes in turn (0 1 2 … 0 1 2 …), or with
    `per_row`, `per_row` samples of one class after another (0 0 … 1 1 …: one row per class in a grid of that
    width)."""
    index = torch.arange(num_samples, device=device)
    return index // per_row if per_row else index % num_classes
