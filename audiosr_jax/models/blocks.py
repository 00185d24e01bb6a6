"""Layers the networks share: torch-compatible 2-D and 1-D convs, a dense layer and the nearest-×2 upsampler.

The convs and the dense layer take float32 params, compute in `dtype` and **accumulate in float32**
(`preferred_element_type`), casting the result back to `dtype`. In float32 that is exactly `nn.Conv` /
`nn.Dense`. In bfloat16 it is what the matrix units do anyway, and on the CPU it is also what makes them
run: XLA CPU (jaxlib 0.10) executes a bf16 × bf16 → bf16 dot by converting it to float32 (~260 GFLOP/s on
2 cores) but a bf16 × bf16 → f32 dot on the bf16 matrix units (AMX: ~1.6 TFLOP/s), and it runs no
convolution on them at all. So in bf16 on the CPU a stride-1 conv is computed as one shifted matmul per
kernel tap (the "taps" form). Measurements: docs/performance.md §bf16 on this CPU.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Conv1D", "Conv2D", "Dense", "conv2d", "conv_form", "dense", "Upsample"]

CONV_FORMS = ("auto", "xla", "taps")


def conv_form(dtype, strides: int = 1, backend: str | None = None) -> str:
    """The conv form "auto" resolves to: "taps" for a stride-1 bfloat16 conv on the CPU backend (the only way
    XLA CPU puts it on the bf16 matrix units), "xla" (one `lax.conv_general_dilated`) otherwise."""
    backend = backend or jax.default_backend()
    return "taps" if strides == 1 and jnp.dtype(dtype) == jnp.bfloat16 and backend == "cpu" else "xla"


def _resolve_form(form: str, dtype, strides: int) -> str:
    form = conv_form(dtype, strides) if form == "auto" else form
    if form not in ("xla", "taps"):
        raise ValueError(f"conv form must be one of {CONV_FORMS}, got {form!r}")
    if form == "taps" and strides != 1:
        raise ValueError(f"conv form 'taps' needs stride 1, got {strides}")
    return form


class Conv2D(nn.Module):
    """A square 2-D conv with `nn.Conv`'s params (kernel [k, k, Cin, Cout], bias [Cout], float32).

    x [B, H, W, Cin] → [B, H', W', Cout] in `dtype`, products accumulated in float32. padding: explicit
    ((top, bottom), (left, right)). form: "xla" (one conv), "taps" (stride 1: the sum over the k² taps of
    the shifted input times that tap's [Cin, Cout] matrix; the same result up to float32 summation order),
    "auto" (`conv_form`).
    """

    features: int
    kernel: int
    strides: int = 1
    padding: tuple = ((0, 0), (0, 0))
    dtype: Any = jnp.float32
    form: str = "auto"

    @nn.compact
    def __call__(self, x):
        k = self.kernel
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32)
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        padding = tuple(tuple(int(p) for p in side) for side in self.padding)
        h_out, w_out = ((n + sum(p) - k) // self.strides + 1 for n, p in zip(x.shape[1:3], padding))
        form = _resolve_form(self.form, self.dtype, self.strides)
        if form == "xla":
            y = jax.lax.conv_general_dilated(x, w, (self.strides,) * 2, padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             preferred_element_type=jnp.float32)
        else:
            xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
            y = sum(jnp.einsum("bhwc,co->bhwo", xp[:, i:i + h_out, j:j + w_out], w[i, j],
                               preferred_element_type=jnp.float32)
                    for i in range(k) for j in range(k))
        return (y + b).astype(self.dtype)


class Conv1D(nn.Module):
    """A 1-D conv with `nn.Conv`'s params (kernel [k, Cin, Cout], bias [Cout], float32), stride 1.

    x [B, L, Cin] → [B, L + sum(padding) - dilation·(k-1), Cout], products accumulated in float32. The
    result is cast to `dtype`, or left in float32 with `float32_out` (a network's last layer: its output
    is not rounded to bf16). form: as `Conv2D` ("taps": the sum over the k taps of the input shifted by
    dilation·i times that tap's [Cin, Cout] matrix).
    """

    features: int
    kernel: int
    dilation: int = 1
    padding: tuple = (0, 0)
    dtype: Any = jnp.float32
    float32_out: bool = False
    form: str = "auto"

    @nn.compact
    def __call__(self, x):
        k, d = self.kernel, self.dilation
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features), jnp.float32)
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        padding = (int(self.padding[0]), int(self.padding[1]))
        length = x.shape[1] + sum(padding) - d * (k - 1)
        if _resolve_form(self.form, self.dtype, 1) == "xla":
            y = jax.lax.conv_general_dilated(x, w, (1,), (padding,), rhs_dilation=(d,),
                                             dimension_numbers=("NWC", "WIO", "NWC"),
                                             preferred_element_type=jnp.float32)
        else:
            xp = jnp.pad(x, ((0, 0), padding, (0, 0)))
            y = sum(jnp.einsum("blc,co->blo", xp[:, i * d:i * d + length], w[i], preferred_element_type=jnp.float32)
                    for i in range(k))
        y = y + b
        return y if self.float32_out else y.astype(self.dtype)


class Dense(nn.Module):
    """`nn.Dense` with its params (kernel [Cin, Cout], bias [Cout], float32) and float32 accumulation.

    x [..., Cin] → [..., Cout] in `dtype`.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32)
        y = jnp.einsum("...c,co->...o", x.astype(self.dtype), w.astype(self.dtype),
                       preferred_element_type=jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return y.astype(self.dtype)


def conv2d(features: int, kernel: int, dtype, name: str | None, strides: int = 1, padding=None) -> Conv2D:
    """A square conv with torch's symmetric padding kernel//2 (3×3 → 1, 1×1 → 0) unless `padding` is given
    (explicit ((top, bottom), (left, right))). Params float32, compute in `dtype`. NHWC."""
    pad = padding if padding is not None else ((kernel // 2, kernel // 2),) * 2
    return Conv2D(features, kernel, strides, tuple(tuple(p) for p in pad), dtype=dtype, name=name)


def dense(features: int, dtype, name: str, use_bias: bool = True) -> Dense:
    """A dense layer over the last axis, params float32, compute in `dtype`, float32 accumulation."""
    return Dense(features, use_bias=use_bias, dtype=dtype, name=name)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 in H and W, then a 3×3 conv named `conv`. [B, H, W, C] → [B, 2H, 2W, C]."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv2d(x.shape[-1], 3, self.dtype, "conv")(x)
