"""`make_grid` (used by audiosr's logging helpers only) and placeholders for the rest."""

import math

import torch

from ._placeholder import module_getattr

__getattr__ = module_getattr("torchvision.utils")


def make_grid(tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0, **_unused):
    """Tile a [B, C, H, W] batch into one [C, H', W'] image (no normalisation options)."""
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor))
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    b, c, h, w = tensor.shape
    ncol = min(nrow, b)
    nrows = int(math.ceil(b / ncol))
    grid = tensor.new_full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for i in range(b):
        r, k = divmod(i, ncol)
        y, x = r * (h + padding) + padding, k * (w + padding) + padding
        grid[:, y:y + h, x:x + w] = tensor[i]
    return grid
