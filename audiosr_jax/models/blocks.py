"""Layers the VAE and the UNet share: a torch-compatible 2-D conv and the nearest-×2 upsampler."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["conv2d", "Upsample"]


def conv2d(features: int, kernel: int, dtype, name: str | None, strides: int = 1, padding=None) -> nn.Conv:
    """A square conv with torch's symmetric padding kernel//2 (3×3 → 1, 1×1 → 0) unless `padding` is given
    (explicit ((top, bottom), (left, right))). Params float32, compute in `dtype`. NHWC."""
    pad = padding if padding is not None else ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=pad, dtype=dtype,
                   param_dtype=jnp.float32, name=name)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 in H and W, then a 3×3 conv named `conv`. [B, H, W, C] → [B, 2H, 2W, C]."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv2d(x.shape[-1], 3, self.dtype, "conv")(x)
