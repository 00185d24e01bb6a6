"""The 48 kHz HiFi-GAN generator of AudioSR (reference: `audiosr/hifigan/models.py`, `Generator_old`).

Log-mel frames (natural log, 256 bins, 100 frames/s) → 48 kHz waveform. Layout is channels-last (NWC).
Flax submodule names mirror the PyTorch module names with dots turned into underscores
("ups.0" → "ups_0", "resblocks.7.convs1.2" → "resblocks_7/convs1_2"), so the converter's rule table is a
plain rename (see `audiosr_jax/convert/vocoder.py`).

Structure, per upsampling level i (C halves each level, 1536 → 48 for the release):
  leaky_relu(0.1) → ConvTranspose1d(k_i, stride u_i, padding (k_i-u_i)//2)
  → mean over the resblock kernels of ResBlock1(k, dilations (1, 3, 5))
then leaky_relu with the default slope 0.01 (not 0.1: the reference calls `F.leaky_relu(x)`), conv_post
(k7, C → 1) and tanh. Weight norm is removed in the release, so every conv has a plain kernel and bias.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiosr_jax.models.blocks import Conv1D

__all__ = ["VocoderConfig", "HiFiGAN", "ResBlock1", "upsample_conv", "upsample_padding", "LRELU_SLOPE"]

LRELU_SLOPE = 0.1  # inside the network; the final activation uses jax.nn.leaky_relu's default 0.01
_FINAL_SLOPE = 0.01
_PRE_POST_KERNEL = 7  # conv_pre and conv_post are fixed at k7, padding 3 in the reference


@dataclasses.dataclass(frozen=True)
class VocoderConfig:
    """Architecture of the HiFi-GAN generator; the defaults are the released 48 kHz model (190,281,889 params)."""

    num_mels: int = 256
    upsample_rates: tuple[int, ...] = (6, 5, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (12, 10, 8, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 15)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 4

    def __post_init__(self):
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "upsample_rates", tuple(int(u) for u in self.upsample_rates))
        object.__setattr__(self, "upsample_kernel_sizes", tuple(int(k) for k in self.upsample_kernel_sizes))
        object.__setattr__(self, "resblock_kernel_sizes", tuple(int(k) for k in self.resblock_kernel_sizes))
        object.__setattr__(self, "resblock_dilation_sizes",
                           tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes))
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes) or not self.upsample_rates:
            raise ValueError("upsample_rates and upsample_kernel_sizes must be non-empty and of equal length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes) or not self.resblock_kernel_sizes:
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and of equal length")
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes):
            # "same" padding (k*d - d)//2 keeps the length only for odd k; the residual add needs that.
            raise ValueError(f"resblock kernel sizes must be odd, got {self.resblock_kernel_sizes}")
        if any(u < 1 or k < u for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes)):
            raise ValueError("each upsample kernel size must be >= its rate >= 1")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError(f"upsample_initial_channel={self.upsample_initial_channel} must be divisible by "
                             f"2**{len(self.upsample_rates)} (channels halve at every level)")

    @classmethod
    def reduced(cls) -> "VocoderConfig":
        """The parity-test width of docs/design.md §Reduced width: channels 64/32/16/8/4/2 (441,821 params)."""
        return cls(upsample_initial_channel=64)

    @classmethod
    def tiny(cls) -> "VocoderConfig":
        """Smallest useful model for fast tests: same mel bins and hop (480) as the release, channels
        32 → 1, two resblock kernels (3, 7)."""
        return cls(upsample_initial_channel=32, resblock_kernel_sizes=(3, 7),
                   resblock_dilation_sizes=((1, 3, 5),) * 2)

    @property
    def hop_length(self) -> int:
        """Nominal samples per mel frame (product of the upsample rates; 480 = 10 ms at 48 kHz)."""
        return math.prod(self.upsample_rates)

    @property
    def num_kernels(self) -> int:
        return len(self.resblock_kernel_sizes)

    def channels(self, level: int) -> int:
        """Channels after upsampling level `level` (0-based); `channels(-1)` is conv_pre's output."""
        return self.upsample_initial_channel // (2 ** (level + 1))

    def output_length(self, frames: int) -> int:
        """Waveform samples for `frames` mel frames, from the conv arithmetic.

        Every ConvTranspose1d(k, u, p=(k-u)//2) maps L → (L-1)·u - 2p + k; all other convs keep the length.
        A level with k-u odd adds one sample, multiplied by the later rates: 480·T + 16 for the release.
        """
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        n = int(frames)
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            n = (n - 1) * u - 2 * ((k - u) // 2) + k
        return n

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists)."""
        return {"num_mels": self.num_mels,
                "upsample_rates": list(self.upsample_rates),
                "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
                "upsample_initial_channel": self.upsample_initial_channel,
                "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
                "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes]}

    @classmethod
    def from_dict(cls, d: dict) -> "VocoderConfig":
        """Inverse of `to_dict` (lists are turned back into tuples); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown VocoderConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def upsample_padding(kernel_size: int, rate: int) -> tuple[int, int]:
    """Flax ConvTranspose padding equal to torch's ConvTranspose1d(k, stride=u, padding=(k-u)//2).

    torch's padding p crops p samples from each end of the full transposed convolution; lax's explicit
    padding pads the stride-dilated input, so the equivalent is k-1-p on both sides (with the kernel
    flipped, which the converter does). "SAME" would only match when k-u is even.
    """
    p = (kernel_size - rate) // 2
    return (kernel_size - 1 - p, kernel_size - 1 - p)


def upsample_conv(features: int, kernel_size: int, rate: int, *, dtype: Any = jnp.float32,
                  name: str | None = None) -> nn.ConvTranspose:
    """The upsampling layer of one level: [B, L, C_in] → [B, (L-1)·rate - 2·((k-rate)//2) + k, features],
    float32 accumulation (the caller casts the result to its compute dtype)."""
    return nn.ConvTranspose(features, (kernel_size,), strides=(rate,),
                            padding=(upsample_padding(kernel_size, rate),),
                            dtype=dtype, param_dtype=jnp.float32, preferred_element_type=jnp.float32, name=name)


def _conv(features: int, kernel_size: int, dilation: int, dtype: Any, name: str, float32_out: bool = False) -> Conv1D:
    pad = (kernel_size * dilation - dilation) // 2
    return Conv1D(features, kernel_size, dilation, (pad, pad), dtype=dtype, float32_out=float32_out, name=name)


class ResBlock1(nn.Module):
    """HiFi-GAN V1 residual block: for each dilation d, x += conv2(lrelu(conv1_d(lrelu(x)))).

    [B, L, channels] → [B, L, channels]. Submodules are `convs1_i` (dilated) and `convs2_i` (dilation 1).
    """

    channels: int
    kernel_size: int
    dilations: tuple[int, ...] = (1, 3, 5)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, d in enumerate(self.dilations):
            h = nn.leaky_relu(x, LRELU_SLOPE)
            h = _conv(self.channels, self.kernel_size, d, self.dtype, f"convs1_{i}")(h)
            h = nn.leaky_relu(h, LRELU_SLOPE)
            h = _conv(self.channels, self.kernel_size, 1, self.dtype, f"convs2_{i}")(h)
            x = h + x
        return x


class HiFiGAN(nn.Module):
    """The 48 kHz HiFi-GAN generator (`Generator_old` of the reference, weight norm removed)."""

    config: VocoderConfig = VocoderConfig()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, mel: jax.Array) -> jax.Array:
        """mel [B, T, num_mels] (natural-log mel, 100 frames/s) → waveform [B, output_length(T)] in [-1, 1],
        48 kHz, float32. (The reference takes [B, num_mels, T]; this is its transpose.)"""
        cfg = self.config
        if mel.ndim != 3 or mel.shape[-1] != cfg.num_mels:
            raise ValueError(f"mel must be [B, T, {cfg.num_mels}], got {mel.shape}")
        x = _conv(cfg.upsample_initial_channel, _PRE_POST_KERNEL, 1, self.dtype, "conv_pre")(mel)
        nk = cfg.num_kernels
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ch = cfg.channels(i)
            x = nn.leaky_relu(x, LRELU_SLOPE)
            x = upsample_conv(ch, k, u, dtype=self.dtype, name=f"ups_{i}")(x).astype(self.dtype)
            xs = None
            for j, (rk, rd) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
                y = ResBlock1(ch, rk, rd, dtype=self.dtype, name=f"resblocks_{i * nk + j}")(x)
                xs = y if xs is None else xs + y
            x = xs / nk  # sum then divide, in the reference's order
        x = nn.leaky_relu(x, _FINAL_SLOPE)
        # The waveform itself is never rounded to bf16: the last conv's float32 sums and tanh stay float32.
        x = _conv(1, _PRE_POST_KERNEL, 1, self.dtype, "conv_post", float32_out=True)(x)
        return jnp.tanh(x[..., 0])
