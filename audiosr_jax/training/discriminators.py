"""Discriminators for the GAN terms of the VAE (PatchGAN on the mel) and vocoder (MPD + MSD + MRD) stages.

The reference release ships no discriminator code or weights (docs/design.md §VAE training, §Vocoder training),
so these follow the published designs: HiFi-GAN's multi-period (MPD) and multi-scale (MSD) discriminators,
UnivNet's multi-resolution spectrogram discriminator (MRD), and taming-transformers' `NLayerDiscriminator`
(PatchGAN).

Conventions:
  * flax.linen, channels last (NWC / NHWC), `dtype` is the compute dtype, params are float32.
  * Pure: no mutable collections (no BatchNorm statistics, no spectral-norm power-iteration state), so
    `init`/`apply` need nothing but `params` and the step works unchanged under jit, grad and sharding.
  * Every discriminator returns `(logits, features)`: `logits` is a list (one per sub-discriminator) of
    float32 [B, N] arrays (the last conv output flattened, as HiFi-GAN's `torch.flatten(x, 1, -1)`), and
    `features` a list (one per sub-discriminator) of lists of every intermediate activation (after each
    leaky ReLU, plus the final conv output, as HiFi-GAN's `fmap`), in the compute dtype.

Weight normalisation: HiFi-GAN and UnivNet wrap their convs in `torch.nn.utils.weight_norm`. Here `WNConv`
implements it directly (kernel = scale · v / ||v||, the norm over every axis but the output one, computed in
float32), with params `{kernel, scale, bias}`. `flax.linen.WeightNorm` works under jit/grad too, but it stores
the gain under a key containing slashes (`{"WeightNorm_0": {"conv/kernel/scale": ...}}`), which breaks
path-based sharding rules and checkpoint naming, so it is not used. As in torch, the gain is initialised to the
norm of the initial kernel (the effective kernel at init equals `v`), and the kernel init is torch's default
conv init (U(±1/sqrt(fan_in))); biases start at 0. HiFi-GAN's first MSD scale uses spectral norm, which needs
power-iteration state: it uses weight norm here instead.

Sharding: the params follow the repo's rank-based table (`audiosr_jax.sharding`): kernels
[*spatial, in, out], gains and biases [C]. Checked on 8 fake CPU devices: with the batch on data+fsdp and
kernels FSDP-sharded on `in`, gradients equal the unsharded ones. XLA issue (jax 0.10.2): the kernel gradient
of a *grouped* conv (the MSD) comes out `tensor` times too large when the batch is sharded over some mesh axes
and replicated over others (tensor > 1), whatever the kernel's sharding. The training loop traces its step
under `audiosr_jax.sharding.grouped_convs_batch_sharded`, which pins every grouped conv's batch to all mesh
axes, so the MSD trains on any mesh (tests/test_gan.py: exact gradients on data × tensor meshes;
tests/test_train_stages.py: a vocoder step on data 4 × tensor 2 equals data 8). Applying these modules
under jit on a tensor-parallel mesh outside that context gives the wrong gradient.

Param counts at the standard width (weight norm adds one gain per output channel, as torch's `weight_g`):
  * MultiPeriodDiscriminator: 41,105,770 (HiFi-GAN V1 MPD: 41.1 M).
  * MultiScaleDiscriminator: 29,622,918 = 29,610,627 conv weights and biases (HiFi-GAN MSD: 29.6 M) plus
    3 × 4,097 weight-norm gains. torch's MSD has 29,618,821 parameters: its first scale uses spectral norm
    (no gain; power-iteration buffers are not parameters), here weight norm, so 4,097 gains more.
  * MultiResolutionDiscriminator (3 resolutions, 32 channels): 280,902 (UnivNet's MRD, 3 × 93,634).
  * VocoderDiscriminator (all three): 71,009,590.
  * PatchDiscriminator (ndf 64, 3 layers, 1 channel): 2,763,585 (taming's NLayerDiscriminator with
    BatchNorm: the same count, BatchNorm's affine params becoming GroupNorm's).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.audio import frame_signal

__all__ = [
    "WNConv",
    "PeriodDiscriminator",
    "MultiPeriodDiscriminator",
    "ScaleDiscriminator",
    "MultiScaleDiscriminator",
    "ResolutionDiscriminator",
    "MultiResolutionDiscriminator",
    "VocoderDiscriminator",
    "PatchDiscriminator",
    "linear_spectrogram",
    "count_params",
]

Dtype = Any

MPD_SLOPE = 0.1  # HiFi-GAN LRELU_SLOPE
MSD_SLOPE = 0.1
MRD_SLOPE = 0.2  # UnivNet hp.mpd.lReLU_slope
PATCH_SLOPE = 0.2  # taming NLayerDiscriminator
MRD_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))  # (n_fft, hop, win_length)
TINY_WIDTH = 1 / 16  # the tiny() variants (tests, CPU demo); tiny vocoder parts equal the standalone tiny ones


def _scaled(c: int, mult: float) -> int:
    return max(1, int(round(c * mult)))


def _torch_default_kernel_init():
    # torch Conv default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def count_params(params) -> int:
    """Total number of scalars in a params pytree (works on `jax.eval_shape` output too)."""
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


class WNConv(nn.Module):
    """N-d convolution (channels last) with optional weight normalisation.

    Args: x [B, *spatial, C_in]. Returns [B, *spatial', features] in `dtype`.
    `padding` is a sequence of (low, high) zero-padding pairs per spatial axis; `groups` as torch `groups`.
    Params: kernel [*kernel_size, C_in/groups, features] (v), scale [features] (g, only with weight_norm),
    bias [features].
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] | None = None
    padding: Sequence[tuple[int, int]] | None = None
    groups: int = 1
    use_bias: bool = True
    weight_norm: bool = True
    kernel_init: Any = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        nd = len(self.kernel_size)
        c_in = x.shape[-1]
        if c_in % self.groups or self.features % self.groups:
            raise ValueError(f"groups={self.groups} must divide in={c_in} and out={self.features} channels")
        init = self.kernel_init or _torch_default_kernel_init()
        shape = (*self.kernel_size, c_in // self.groups, self.features)
        v = self.param("kernel", init, shape, self.param_dtype)
        kernel = v
        if self.weight_norm:
            axes = tuple(range(nd + 1))
            g = self.param("scale", lambda _rng: jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)))
            v32 = v.astype(jnp.float32)
            inv = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(v32), axis=axes), 1e-24))
            kernel = v32 * (g.astype(jnp.float32) * inv)
        strides = tuple(self.strides) if self.strides is not None else (1,) * nd
        padding = [tuple(p) for p in self.padding] if self.padding is not None else [(0, 0)] * nd
        spatial = "HWD"[:nd] if nd <= 3 else None
        dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=strides,
            padding=padding,
            dimension_numbers=dn,
            feature_group_count=self.groups,
        )
        if self.use_bias:
            b = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + b.astype(self.dtype)
        return y


def _flatten_logits(x) -> jax.Array:
    return x.reshape(x.shape[0], -1).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------------------
# HiFi-GAN multi-period discriminator
# ------------------------------------------------------------------------------------------------------------


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN `DiscriminatorP`: the waveform folded to [B, T/p, p, 1], convs (5, 1) with stride (3, 1).

    Args: wave [B, T] float. Returns (logits [B, N] float32, features list of [B, T', p, C]).
    T is reflect-padded on the right to a multiple of the period, as in HiFi-GAN.
    """

    period: int
    channels: Sequence[int] = (32, 128, 512, 1024, 1024)
    kernel_size: int = 5
    stride: int = 3
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave):
        b, t = wave.shape
        p = self.period
        if t % p:
            wave = jnp.pad(wave, ((0, 0), (0, p - t % p)), mode="reflect")
        x = wave.reshape(b, -1, p, 1).astype(self.dtype)
        k, pad = self.kernel_size, (self.kernel_size - 1) // 2
        feats = []
        n = len(self.channels)
        for i, c in enumerate(self.channels):
            stride = self.stride if i < n - 1 else 1  # the last conv of the stack keeps the length
            x = WNConv(c, (k, 1), (stride, 1), ((pad, pad), (0, 0)), weight_norm=self.weight_norm,
                       dtype=self.dtype, name=f"convs_{i}")(x)
            x = nn.leaky_relu(x, MPD_SLOPE)
            feats.append(x)
        x = WNConv(1, (3, 1), (1, 1), ((1, 1), (0, 0)), weight_norm=self.weight_norm, dtype=self.dtype,
                   name="conv_post")(x)
        feats.append(x)
        return _flatten_logits(x), feats


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN MPD: one `PeriodDiscriminator` per period (submodules `discriminators_{i}`).

    Args: wave [B, T]. Returns (logits: list of [B, N_p] float32, features: list of lists).
    """

    periods: Sequence[int] = (2, 3, 5, 7, 11)
    channels: Sequence[int] = (32, 128, 512, 1024, 1024)
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @classmethod
    def tiny(cls, **kw) -> "MultiPeriodDiscriminator":
        return cls(channels=tuple(_scaled(c, TINY_WIDTH) for c in (32, 128, 512, 1024, 1024)), **kw)

    @nn.compact
    def __call__(self, wave):
        logits, feats = [], []
        for i, p in enumerate(self.periods):
            lg, ft = PeriodDiscriminator(p, tuple(self.channels), weight_norm=self.weight_norm, dtype=self.dtype,
                                         name=f"discriminators_{i}")(wave)
            logits.append(lg)
            feats.append(ft)
        return logits, feats


# ------------------------------------------------------------------------------------------------------------
# HiFi-GAN multi-scale discriminator
# ------------------------------------------------------------------------------------------------------------

# HiFi-GAN DiscriminatorS: (out channels, kernel, stride, groups); channels scale with the width multiplier
_MSD_LAYERS = ((128, 15, 1, 1), (128, 41, 2, 4), (256, 41, 2, 16), (512, 41, 4, 16), (1024, 41, 4, 16),
               (1024, 41, 1, 16), (1024, 5, 1, 1))


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN `DiscriminatorS`: grouped 1-D convs on the waveform [B, T, 1].

    Args: wave [B, T]. Returns (logits [B, N] float32, features list of [B, T', C]).
    Groups are reduced to gcd(groups, C_in, C_out) when a narrow width makes them not divide.
    """

    width_multiplier: float = 1.0
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave):
        x = wave[..., None].astype(self.dtype)
        feats = []
        c_in = 1
        for i, (c, k, s, g) in enumerate(_MSD_LAYERS):
            c = _scaled(c, self.width_multiplier)
            g = math.gcd(g, c_in, c)
            pad = (k - 1) // 2
            x = WNConv(c, (k,), (s,), ((pad, pad),), groups=g, weight_norm=self.weight_norm, dtype=self.dtype,
                       name=f"convs_{i}")(x)
            x = nn.leaky_relu(x, MSD_SLOPE)
            feats.append(x)
            c_in = c
        x = WNConv(1, (3,), (1,), ((1, 1),), weight_norm=self.weight_norm, dtype=self.dtype, name="conv_post")(x)
        feats.append(x)
        return _flatten_logits(x), feats


def _avg_pool_4_2(x):
    """torch AvgPool1d(4, 2, padding=2) (count_include_pad=True) on [B, T]: zero pad 2, window sum / 4."""
    x = jnp.pad(x, ((0, 0), (2, 2)))
    n_pairs = x.shape[-1] // 2
    pairs = x[:, : 2 * n_pairs].reshape(x.shape[0], n_pairs, 2).sum(-1)
    return (pairs[:, :-1] + pairs[:, 1:]) * 0.25  # window i = pair i + pair i+1; length T // 2 + 1


class MultiScaleDiscriminator(nn.Module):
    """HiFi-GAN MSD: `scales` ScaleDiscriminators on the waveform, avg-pooled (4, stride 2) between scales.

    Args: wave [B, T]. Returns (logits: list of [B, N_s] float32, features: list of lists).
    """

    scales: int = 3
    width_multiplier: float = 1.0
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @classmethod
    def tiny(cls, **kw) -> "MultiScaleDiscriminator":
        return cls(width_multiplier=TINY_WIDTH, **kw)

    @nn.compact
    def __call__(self, wave):
        logits, feats = [], []
        x = wave.astype(jnp.float32)
        for i in range(self.scales):
            if i > 0:
                x = _avg_pool_4_2(x)
            lg, ft = ScaleDiscriminator(self.width_multiplier, self.weight_norm, self.dtype,
                                        name=f"discriminators_{i}")(x)
            logits.append(lg)
            feats.append(ft)
        return logits, feats


# ------------------------------------------------------------------------------------------------------------
# UnivNet multi-resolution (spectrogram) discriminator
# ------------------------------------------------------------------------------------------------------------


def linear_spectrogram(wave, n_fft: int, hop: int, win_length: int) -> jax.Array:
    """|STFT| as UnivNet's `DiscriminatorR.spectrogram`, with a Hann window.

    Reflect pad (n_fft - hop) // 2 on each side, frames every `hop`, `center=False`, a periodic Hann window
    of `win_length` centred in `n_fft` (zero padded), onesided magnitude. UnivNet passes no window to
    torch.stft (a rectangular one); Hann is used here because the MRD is meant to judge spectral leakage,
    which a rectangular window adds by itself.

    Args: wave [B, T] (T > (n_fft - hop) // 2). Returns float32 [B, T // hop, n_fft // 2 + 1].
    """
    wave = jnp.asarray(wave, jnp.float32)
    pad = (n_fft - hop) // 2
    x = jnp.pad(wave, ((0, 0), (pad, pad)), mode="reflect")
    n_frames = (x.shape[-1] - n_fft) // hop + 1
    # Only the win_length samples under the (centred) window matter; a circular shift of the frame changes
    # the DFT's phase, not its magnitude, so frame them at their offset and let rfft zero-pad to n_fft.
    off = (n_fft - win_length) // 2
    frames = frame_signal(x[..., off:], win_length, hop, n_frames)
    n = np.arange(win_length)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)).astype(np.float32)
    return jnp.abs(jnp.fft.rfft(frames * window, n=n_fft, axis=-1))


class ResolutionDiscriminator(nn.Module):
    """UnivNet `DiscriminatorR` on one STFT resolution; the spectrogram as an image [B, frames, bins, 1].

    Convs: (9, 3) over (time, freq) — UnivNet's (3, 9) in its [B, 1, F, T] layout — strides (1,1), (2,1)×3
    on time, then (3, 3), and a (3, 3) conv_post; leaky ReLU 0.2.
    Args: wave [B, T]. Returns (logits [B, N] float32, features list of [B, T', F, C]).
    """

    resolution: tuple[int, int, int]
    channels: int = 32
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave):
        x = linear_spectrogram(wave, *self.resolution)[..., None].astype(self.dtype)
        feats = []
        layers = [((9, 3), (1, 1)), ((9, 3), (2, 1)), ((9, 3), (2, 1)), ((9, 3), (2, 1)), ((3, 3), (1, 1))]
        for i, (k, s) in enumerate(layers):
            pads = tuple(((kk - 1) // 2, (kk - 1) // 2) for kk in k)
            x = WNConv(self.channels, k, s, pads, weight_norm=self.weight_norm, dtype=self.dtype,
                       name=f"convs_{i}")(x)
            x = nn.leaky_relu(x, MRD_SLOPE)
            feats.append(x)
        x = WNConv(1, (3, 3), (1, 1), ((1, 1), (1, 1)), weight_norm=self.weight_norm, dtype=self.dtype,
                   name="conv_post")(x)
        feats.append(x)
        return _flatten_logits(x), feats


class MultiResolutionDiscriminator(nn.Module):
    """UnivNet MRD: one `ResolutionDiscriminator` per (n_fft, hop, win_length), resolutions suited to 48 kHz.

    Args: wave [B, T] with T > 1024 for the default resolutions. Returns (logits list, features list of lists).
    """

    resolutions: Sequence[tuple[int, int, int]] = MRD_RESOLUTIONS
    channels: int = 32
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @classmethod
    def tiny(cls, **kw) -> "MultiResolutionDiscriminator":
        return cls(channels=_scaled(32, TINY_WIDTH), **kw)

    @nn.compact
    def __call__(self, wave):
        logits, feats = [], []
        for i, r in enumerate(self.resolutions):
            lg, ft = ResolutionDiscriminator(tuple(r), self.channels, self.weight_norm, self.dtype,
                                             name=f"discriminators_{i}")(wave)
            logits.append(lg)
            feats.append(ft)
        return logits, feats


# ------------------------------------------------------------------------------------------------------------
# Vocoder discriminator (MPD + MSD + MRD)
# ------------------------------------------------------------------------------------------------------------


class VocoderDiscriminator(nn.Module):
    """The vocoder stage's discriminator: any of MPD ("mpd"), MSD ("msd") and MRD ("mrd"), in `kinds` order.

    `width_multiplier` scales every channel count (1.0 = the standard HiFi-GAN / UnivNet widths).
    Submodules are named by kind ("mpd", "msd", "mrd").
    Args: wave [B, T] float. Returns (logits, features): the concatenation of each part's lists, in the order
    given by `sub_names()` (e.g. "mpd_p2", ..., "msd_s0", ..., "mrd_1024").
    """

    kinds: Sequence[str] = ("mpd", "msd", "mrd")
    width_multiplier: float = 1.0
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    scales: int = 3
    resolutions: Sequence[tuple[int, int, int]] = MRD_RESOLUTIONS
    weight_norm: bool = True
    dtype: Dtype = jnp.float32

    @classmethod
    def tiny(cls, **kw) -> "VocoderDiscriminator":
        return cls(width_multiplier=TINY_WIDTH, **kw)

    def sub_names(self) -> list[str]:
        """One name per returned logits entry (for per-discriminator logging)."""
        names = []
        for kind in self.kinds:
            if kind == "mpd":
                names += [f"mpd_p{p}" for p in self.periods]
            elif kind == "msd":
                names += [f"msd_s{i}" for i in range(self.scales)]
            elif kind == "mrd":
                names += [f"mrd_{r[0]}" for r in self.resolutions]
        return names

    @nn.compact
    def __call__(self, wave):
        m = self.width_multiplier
        logits, feats = [], []
        for kind in self.kinds:
            if kind == "mpd":
                chans = tuple(_scaled(c, m) for c in (32, 128, 512, 1024, 1024))
                d = MultiPeriodDiscriminator(tuple(self.periods), chans, self.weight_norm, self.dtype, name="mpd")
            elif kind == "msd":
                d = MultiScaleDiscriminator(self.scales, m, self.weight_norm, self.dtype, name="msd")
            elif kind == "mrd":
                d = MultiResolutionDiscriminator(tuple(tuple(r) for r in self.resolutions), _scaled(32, m),
                                                 self.weight_norm, self.dtype, name="mrd")
            else:
                raise ValueError(f"unknown discriminator kind {kind!r} (expected 'mpd', 'msd' or 'mrd')")
            lg, ft = d(wave)
            logits += lg
            feats += ft
        return logits, feats


# ------------------------------------------------------------------------------------------------------------
# taming PatchGAN (VAE stage)
# ------------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """taming-transformers `NLayerDiscriminator` (PatchGAN) on the log-mel image [B, T, F, in_channels].

    4×4 convs, padding 1: conv(ndf, stride 2) + leaky 0.2; then per layer n < n_layers conv(ndf·min(2^n, 8),
    stride 2, no bias) + norm + leaky; conv(ndf·min(2^n_layers, 8), stride 1, no bias) + norm + leaky;
    conv(1, stride 1). taming's BatchNorm is replaced by GroupNorm (stateless: no running statistics, so no
    mutable collection and no train/eval difference; computed in float32) with gcd(norm_groups, C) groups.
    Init as taming's `weights_init`: conv kernels N(0, 0.02), norm scale N(1, 0.02), biases 0.
    Args: mel [B, T, F, C]. Returns (logits [B, T', F', 1] float32, features: list of activations).
    For T = F = 64 and 3 layers the logits are [B, 6, 6, 1].
    """

    ndf: int = 64
    n_layers: int = 3
    norm_groups: int = 32
    dtype: Dtype = jnp.float32

    @classmethod
    def tiny(cls, **kw) -> "PatchDiscriminator":
        return cls(ndf=8, norm_groups=4, **kw)

    @nn.compact
    def __call__(self, mel):
        kinit = nn.initializers.normal(0.02)
        pad = ((1, 1), (1, 1))

        def conv(c, stride, bias, name):
            return WNConv(c, (4, 4), (stride, stride), pad, use_bias=bias, weight_norm=False, kernel_init=kinit,
                          dtype=self.dtype, name=name)

        def norm(x, name):
            c = x.shape[-1]
            gn = nn.GroupNorm(num_groups=math.gcd(self.norm_groups, c), epsilon=1e-5, dtype=jnp.float32,
                              use_fast_variance=False, name=name,
                              scale_init=lambda k, s, d=jnp.float32: 1.0 + 0.02 * jax.random.normal(k, s, d))
            return gn(x.astype(jnp.float32)).astype(self.dtype)

        feats = []
        x = conv(self.ndf, 2, True, "conv_0")(mel.astype(self.dtype))
        x = nn.leaky_relu(x, PATCH_SLOPE)
        feats.append(x)
        mult = 1
        for n in range(1, self.n_layers + 1):
            mult = min(2**n, 8)
            stride = 2 if n < self.n_layers else 1
            x = conv(self.ndf * mult, stride, False, f"conv_{n}")(x)
            x = nn.leaky_relu(norm(x, f"norm_{n}"), PATCH_SLOPE)
            feats.append(x)
        x = conv(1, 1, True, f"conv_{self.n_layers + 1}")(x)
        return x.astype(jnp.float32), feats
