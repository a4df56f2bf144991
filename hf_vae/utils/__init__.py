"""Small helpers shared by the trainer, the evaluator and the scripts."""

from .images import make_grid, save_image_grid

__all__ = ["make_grid", "save_image_grid"]
