"""AudioSR's mel VAE (`AutoencoderKL`) in Flax.

Mirrors `audiosr/latent_encoder/autoencoder.py` and the Encoder/Decoder of
`latent_diffusion/modules/diffusionmodules/model.py` with `attn_resolutions=[]` (attention only in the mid
block), `double_z=True`, no timestep embedding, dropout inactive (inference), no tanh on the output.

Layout is channels-last: a log-mel batch is [B, T, F, C] (H = time frames, W = mel bins), where the reference
uses [B, C, T, F]. The latent is [B, T/f, F/f, embed_dim] with f = `VAEConfig.downsample_factor` (8 for the
released model).

Param tree (names chosen so the torch → Flax rule table is a name substitution, see
`audiosr_jax/convert/vae.py`):

  encoder/  conv_in, down_{L}_block_{B}/{norm1,conv1,norm2,conv2[,nin_shortcut]}, down_{L}_downsample/conv,
            mid_block_1, mid_attn_1/{norm,q,k,v,proj_out}, mid_block_2, norm_out, conv_out
  decoder/  conv_in, mid_block_1, mid_attn_1, mid_block_2, up_{L}_block_{B}/..., up_{L}_upsample/conv,
            norm_out, conv_out
  quant_conv, post_quant_conv
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from audiosr_jax.models.blocks import Upsample
from audiosr_jax.models.blocks import conv2d as _conv

__all__ = ["VAEConfig", "AutoencoderKL", "Encoder", "Decoder", "ResnetBlock", "AttnBlock",
           "posterior_sample"]

_GROUPS = 32  # the reference's Normalize(): GroupNorm(32 groups, eps 1e-6, affine)
_EPS = 1e-6
# The reference clamps the posterior log-variance to this range (DiagonalGaussianDistribution).
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of the VAE; the defaults are the released AudioSR model (`ddconfig`, embed_dim=16).

    ch: base width; level L has ch * ch_mult[L] channels (every width must be a multiple of 32).
    num_res_blocks: ResnetBlocks per encoder level (the decoder has num_res_blocks + 1 per level).
    z_channels: decoder input / half the encoder output channels; embed_dim: latent channels.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    z_channels: int = 16
    embed_dim: int = 16
    in_channels: int = 1
    out_ch: int = 1

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not self.ch_mult or self.num_res_blocks < 1:
            raise ValueError(f"VAEConfig needs at least one level and one block per level: {self}")
        for m in self.ch_mult:
            if (self.ch * m) % _GROUPS:
                raise ValueError(f"VAEConfig width ch*mult={self.ch * m} is not a multiple of {_GROUPS} "
                                 "(GroupNorm groups)")

    @classmethod
    def reduced(cls) -> "VAEConfig":
        """The parity-test width (ch=32: levels 32/64/128/256), otherwise the released architecture."""
        return cls(ch=32)

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """Smallest useful config for fast unit tests: two levels (factor 2), one block per level."""
        return cls(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4)

    @property
    def downsample_factor(self) -> int:
        """Time and frequency downsampling factor between a mel and its latent."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d) -> "VAEConfig":
        d = dict(d)
        if "ch_mult" in d:
            d["ch_mult"] = tuple(d["ch_mult"])
        return cls(**d)


def _swish(x):
    return x * jax.nn.sigmoid(x)


def _norm(name):
    # Always float32 (torch's two-pass variance); callers cast back to the compute dtype.
    return nn.GroupNorm(num_groups=_GROUPS, epsilon=_EPS, use_fast_variance=False, dtype=jnp.float32,
                        param_dtype=jnp.float32, name=name)


def _apply_norm(norm: nn.Module, x, dtype):
    return norm(x.astype(jnp.float32)).astype(dtype)


class ResnetBlock(nn.Module):
    """norm1 → swish → conv1 → norm2 → swish → conv2, plus a 1×1 `nin_shortcut` when widths differ.

    x [B, H, W, Cin] → [B, H, W, out_channels].
    """

    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.astype(self.dtype)
        h = _swish(_apply_norm(_norm("norm1"), x, self.dtype))
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
        h = _swish(_apply_norm(_norm("norm2"), h, self.dtype))
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions, q/k/v/proj_out as 1×1 convs, scale C^-0.5.

    x [B, H, W, C] → [B, H, W, C] (residual). Logits and softmax are computed in float32.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        x = x.astype(self.dtype)
        h = _apply_norm(_norm("norm"), x, self.dtype)
        q = _conv(c, 1, self.dtype, "q")(h).reshape(b, hh * ww, c)
        k = _conv(c, 1, self.dtype, "k")(h).reshape(b, hh * ww, c)
        v = _conv(c, 1, self.dtype, "v")(h).reshape(b, hh * ww, c)
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32) * (c ** -0.5)
        w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bij,bjc->bic", w, v, preferred_element_type=jnp.float32).astype(self.dtype)
        out = out.reshape(b, hh, ww, c)
        return x + _conv(c, 1, self.dtype, "proj_out")(out)


class Downsample(nn.Module):
    """Zero-pad one row/column at the bottom/right (torch pad (0,1,0,1)), then 3×3 conv, stride 2, no padding.

    [B, H, W, C] → [B, floor(H/2), floor(W/2), C].
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        # The asymmetric pad folded into the conv's explicit padding: identical to pad-then-VALID.
        return _conv(x.shape[-1], 3, self.dtype, "conv", strides=2, padding=((0, 1), (0, 1)))(x)


class Encoder(nn.Module):
    """mel [B, T, F, in_channels] → moments [B, T/f, F/f, 2·z_channels] (before quant_conv)."""

    config: VAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.config, self.dtype
        h = _conv(cfg.ch, 3, dt, "conv_in")(x.astype(dt))
        for level, mult in enumerate(cfg.ch_mult):
            for block in range(cfg.num_res_blocks):
                h = ResnetBlock(cfg.ch * mult, dtype=dt, name=f"down_{level}_block_{block}")(h)
            if level != len(cfg.ch_mult) - 1:
                h = Downsample(dtype=dt, name=f"down_{level}_downsample")(h)
        width = h.shape[-1]
        h = ResnetBlock(width, dtype=dt, name="mid_block_1")(h)
        h = AttnBlock(dtype=dt, name="mid_attn_1")(h)
        h = ResnetBlock(width, dtype=dt, name="mid_block_2")(h)
        h = _swish(_apply_norm(_norm("norm_out"), h, dt))
        return _conv(2 * cfg.z_channels, 3, dt, "conv_out")(h)


class Decoder(nn.Module):
    """z [B, t, f, z_channels] (after post_quant_conv) → mel [B, t·f, f·f, out_ch]. No tanh."""

    config: VAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg, dt = self.config, self.dtype
        width = cfg.ch * cfg.ch_mult[-1]
        h = _conv(width, 3, dt, "conv_in")(z.astype(dt))
        h = ResnetBlock(width, dtype=dt, name="mid_block_1")(h)
        h = AttnBlock(dtype=dt, name="mid_attn_1")(h)
        h = ResnetBlock(width, dtype=dt, name="mid_block_2")(h)
        for level in reversed(range(len(cfg.ch_mult))):
            for block in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(cfg.ch * cfg.ch_mult[level], dtype=dt, name=f"up_{level}_block_{block}")(h)
            if level != 0:
                h = Upsample(dtype=dt, name=f"up_{level}_upsample")(h)
        h = _swish(_apply_norm(_norm("norm_out"), h, dt))
        return _conv(cfg.out_ch, 3, dt, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """The AudioSR VAE. `dtype` is the compute dtype; params are float32; outputs are float32.

    Use `model.apply(params, mel, method=AutoencoderKL.encode)` / `method=AutoencoderKL.decode`.
    """

    config: VAEConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, dtype=self.dtype)
        self.decoder = Decoder(cfg, dtype=self.dtype)
        self.quant_conv = _conv(2 * cfg.embed_dim, 1, self.dtype, None)
        self.post_quant_conv = _conv(cfg.z_channels, 1, self.dtype, None)

    def encode(self, mel) -> tuple[jax.Array, jax.Array]:
        """mel [B, T, F, in_channels] (log-mel, H=time, W=mel bins; T and F multiples of the factor f) →
        (mean, logvar), each float32 [B, T/f, F/f, embed_dim] after quant_conv; logvar clamped to [-30, 20]."""
        moments = self.quant_conv(self.encoder(mel)).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)  # torch.chunk(…, 2, dim=channels): mean first
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z) -> jax.Array:
        """z [B, T/f, F/f, embed_dim] (unscaled latent) → mel float32 [B, T, F, out_ch]."""
        h = self.post_quant_conv(z.astype(self.dtype))
        return self.decoder(h).astype(jnp.float32)

    def __call__(self, mel):
        """decode(mean of encode(mel)); used to initialise all params."""
        return self.decode(self.encode(mel)[0])


def posterior_sample(mean, logvar, eps) -> jax.Array:
    """A draw from the diagonal Gaussian posterior: mean + exp(0.5·logvar)·eps (all the same shape).

    The reference pipeline always samples (never takes the mode); eps ~ N(0, 1) of mean's shape.
    """
    return mean + jnp.exp(0.5 * logvar) * eps
