"""AudioSR's latent-diffusion UNet (`UNetModel`, openaimodel.py) in Flax.

The released configuration: `use_spatial_transformer=True`, `context_dim=None` (no cross-attention, every
attention is self-attention), `extra_sa_layer=True` (two SpatialTransformers per attention site),
`legacy=True`, `use_scale_shift_norm=False`, `resblock_updown=False`, `conv_resample=True`, dropout inactive
(inference), no class / FiLM embedding.

Layout is channels-last: x is [B, H, W, C] with H = latent time frames and W = latent frequency bins, where
the reference uses [B, C, H, W]. Tokens of a SpatialTransformer are laid out (h w), time-major, exactly like
the reference's `b c h w -> b (h w) c`.

The 32 input channels are the noisy latent x_t (16) concatenated with the scaled condition latent (16); that
concatenation happens in the pipeline, not here.

Param tree: every torch module name maps to a Flax path by joining each numeric index to the name before it
("input_blocks.4.1.transformer_blocks.0.ff.net.0.proj" → input_blocks_4_1 / transformer_blocks_0 / ff /
net_0 / proj), see `audiosr_jax/convert/unet.py`:

  time_embed_0, time_embed_2                              Linear, SiLU, Linear
  input_blocks_0_0                                        conv 3×3 in_channels → model_channels
  {input_blocks_N,middle_block,output_blocks_N}_M         ResBlock / SpatialTransformer / Downsample / Upsample
    ResBlock:  in_layers_0 (GN), in_layers_2 (conv), emb_layers_1, out_layers_0 (GN), out_layers_3 (conv),
               [skip_connection (1×1 conv)]
    SpatialTransformer: norm, proj_in, transformer_blocks_D/{norm1, attn1, norm2, attn2, norm3, ff}, proj_out
      attn: to_q, to_k, to_v (no bias), to_out_0;  ff: net_0/proj (GEGLU), net_2
    Downsample: op;  Upsample: conv
  out_0 (GN), out_2 (conv 3×3 model_channels → out_channels)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from audiosr_jax.models.blocks import Upsample, dense
from audiosr_jax.models.blocks import conv2d as _conv

__all__ = ["UNetConfig", "UNetModel", "ResBlock", "SpatialTransformer", "BasicTransformerBlock", "Layer",
           "timestep_embedding", "unet_layout"]

_GROUPS = 32  # GroupNorm32 / Normalize: always 32 groups
_RES_EPS = 1e-5  # ResBlock and output GroupNorm32 (torch default eps)
_ST_EPS = 1e-6  # SpatialTransformer's Normalize()
_LN_EPS = 1e-5  # LayerNorm in BasicTransformerBlock (torch default)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of the UNet; the defaults are the released AudioSR model (258,195,088 parameters).

    in_channels / out_channels: input (x_t ++ condition) and output (v-prediction) channels.
    model_channels: base width; level L has model_channels * channel_mult[L] channels (multiples of 32).
    num_res_blocks: ResBlocks per level on the way down (num_res_blocks + 1 on the way up).
    attention_resolutions: the downsampling rates ds = 2**L of the levels that carry SpatialTransformers
      (the middle block always has them).
    num_head_channels: channels per head; heads = ch // num_head_channels and, as in the reference's
      legacy mode, dim_head = ch // heads.
    transformer_depth: BasicTransformerBlocks per SpatialTransformer.
    extra_sa_layer: two SpatialTransformers per attention site (True) or one (False).
    """

    in_channels: int = 32
    out_channels: int = 16
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 5)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 4, 2)
    num_head_channels: int = 32
    transformer_depth: int = 1
    extra_sa_layer: bool = True

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        # A set of rates; kept sorted high → low (the released order) so equal configs compare equal.
        object.__setattr__(self, "attention_resolutions",
                           tuple(sorted({int(r) for r in self.attention_resolutions}, reverse=True)))
        if not self.channel_mult or self.num_res_blocks < 1 or self.transformer_depth < 1:
            raise ValueError(f"UNetConfig needs at least one level, one ResBlock per level and a transformer "
                             f"depth >= 1: {self}")
        if self.in_channels < 1 or self.out_channels < 1 or self.num_head_channels < 1:
            raise ValueError(f"UNetConfig channel counts must be positive: {self}")
        if self.channel_mult[0] != 1:
            # The reference's final conv takes model_channels inputs while the last output block yields
            # model_channels * channel_mult[0]; only mult 1 at the top level builds a working model.
            raise ValueError(f"UNetConfig channel_mult must start with 1, got {self.channel_mult}")
        for m in self.channel_mult:
            ch = self.model_channels * m
            if m < 1 or ch % _GROUPS:
                raise ValueError(f"UNetConfig width model_channels*mult={ch} is not a positive multiple of "
                                 f"{_GROUPS} (GroupNorm groups)")
        for ch in self.attention_widths():
            if ch < self.num_head_channels:
                raise ValueError(f"UNetConfig attention width {ch} is smaller than num_head_channels="
                                 f"{self.num_head_channels}")

    @classmethod
    def reduced(cls) -> "UNetConfig":
        """The parity-test width (model_channels=32: levels 32/64/96/160, heads 2/3/5 × 32)."""
        return cls(model_channels=32)

    @classmethod
    def tiny(cls) -> "UNetConfig":
        """Smallest valid config for fast unit tests: two levels (factor 2), attention at ds=2 and middle."""
        return cls(in_channels=8, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(2,))

    @property
    def downsample_factor(self) -> int:
        """Factor by which H and W shrink at the bottom of the UNet; inputs must be divisible by it."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def heads(self, ch: int) -> tuple[int, int]:
        """(num_heads, dim_head) of a SpatialTransformer at width ch (legacy rule: dim_head = ch // heads)."""
        n = ch // self.num_head_channels
        return n, ch // n

    def attention_widths(self) -> list[int]:
        """Channel widths of every attention site (levels in attention_resolutions, plus the middle)."""
        widths = [self.model_channels * m for lvl, m in enumerate(self.channel_mult)
                  if 2 ** lvl in self.attention_resolutions]
        return widths + [self.model_channels * self.channel_mult[-1]]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d) -> "UNetConfig":
        d = dict(d)
        for k in ("channel_mult", "attention_resolutions"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------
# Block layout, shared by the model and the converter so the two can never disagree.

@dataclasses.dataclass(frozen=True)
class Layer:
    """One sub-module of a TimestepEmbedSequential: kind in {conv, res, st, down, up}, input and output
    channel counts (for st, cin == cout and `heads`/`dim_head` are set)."""

    kind: str
    cin: int
    cout: int
    heads: int = 0
    dim_head: int = 0


def unet_layout(cfg: UNetConfig) -> dict[str, list[list[Layer]]]:
    """The reference's block structure: {"input_blocks": [[Layer, ...], ...], "middle_block": [[...]],
    "output_blocks": [...]}; the index of a Layer in its list is its torch index (input_blocks.N.M)."""
    mc = cfg.model_channels
    n_st = 2 if cfg.extra_sa_layer else 1

    def sts(ch):
        h, d = cfg.heads(ch)
        return [Layer("st", ch, ch, h, d)] * n_st

    inputs = [[Layer("conv", cfg.in_channels, mc)]]
    skip_chans = [mc]
    ch = mc
    for lvl, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            block = [Layer("res", ch, mc * mult)]
            ch = mc * mult
            if 2 ** lvl in cfg.attention_resolutions:
                block += sts(ch)
            inputs.append(block)
            skip_chans.append(ch)
        if lvl != len(cfg.channel_mult) - 1:
            inputs.append([Layer("down", ch, ch)])
            skip_chans.append(ch)

    middle = [[Layer("res", ch, ch), *sts(ch), Layer("res", ch, ch)]]

    outputs = []
    for lvl in reversed(range(len(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            skip = skip_chans.pop()
            block = [Layer("res", ch + skip, mc * cfg.channel_mult[lvl])]
            ch = mc * cfg.channel_mult[lvl]
            if 2 ** lvl in cfg.attention_resolutions:
                block += sts(ch)
            if lvl and i == cfg.num_res_blocks:
                block.append(Layer("up", ch, ch))
            outputs.append(block)
    return {"input_blocks": inputs, "middle_block": middle, "output_blocks": outputs}


# ---------------------------------------------------------------------------------------------------------

def timestep_embedding(t, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep embedding, float32 [B, dim] from t [B] (int or float, may be fractional).

    Order [cos(t·f_i), sin(t·f_i)] with f_i = exp(-ln(max_period)·i/half), i < half = dim // 2 (an odd dim
    gets a trailing zero column), exactly like the reference's `util.timestep_embedding`.
    """
    half = dim // 2
    # Same float32 op order as torch: (-ln(P) * i) / half, then exp.
    freqs = jnp.exp(jnp.float32(-math.log(max_period)) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t).astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def _group_norm(x, eps: float, name: str, dtype):
    # Float32 with two-pass variance like torch's GroupNorm32; cast back to the compute dtype.
    norm = nn.GroupNorm(num_groups=_GROUPS, epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                        param_dtype=jnp.float32, name=name)
    return norm(x.astype(jnp.float32)).astype(dtype)


def _layer_norm(x, name: str, dtype):
    norm = nn.LayerNorm(epsilon=_LN_EPS, use_fast_variance=False, dtype=jnp.float32, param_dtype=jnp.float32,
                        name=name)
    return norm(x.astype(jnp.float32)).astype(dtype)


def _dense(features: int, dtype, name: str, use_bias: bool = True):
    return dense(features, dtype, name, use_bias)


class ResBlock(nn.Module):
    """GN → SiLU → conv3×3, + Linear(SiLU(emb)), GN → SiLU → conv3×3, plus a skip (1×1 conv if widths differ).

    x [B, H, W, Cin], emb [B, time_embed_dim] → [B, H, W, out_channels].
    """

    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        h = nn.silu(_group_norm(x, _RES_EPS, "in_layers_0", self.dtype))
        h = _conv(self.out_channels, 3, self.dtype, "in_layers_2")(h)
        e = _dense(self.out_channels, self.dtype, "emb_layers_1")(nn.silu(emb))
        h = h + e[:, None, None, :]  # added, no scale/shift (use_scale_shift_norm=False)
        h = nn.silu(_group_norm(h, _RES_EPS, "out_layers_0", self.dtype))
        h = _conv(self.out_channels, 3, self.dtype, "out_layers_3")(h)  # out_layers_2 is Dropout
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "skip_connection")(x)
        return x + h


class Attention(nn.Module):
    """Multi-head softmax self-attention (the reference's CrossAttention with context=None).

    x [B, N, C] → [B, N, C]; scale dim_head**-0.5, logits and softmax in float32.
    """

    heads: int
    dim_head: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, c = x.shape
        inner = self.heads * self.dim_head
        split = lambda t: t.reshape(b, n, self.heads, self.dim_head)  # "b n (h d)": head-major channels
        q = split(_dense(inner, self.dtype, "to_q", use_bias=False)(x))
        k = split(_dense(inner, self.dtype, "to_k", use_bias=False)(x))
        v = split(_dense(inner, self.dtype, "to_v", use_bias=False)(x))
        # float32 logits, scaled after the product, float32 softmax (as the reference); both products
        # accumulate in float32 (in bf16 that is what puts them on the CPU's matrix units: blocks.py).
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * self.dim_head ** -0.5
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(self.dtype)
        return _dense(c, self.dtype, "to_out_0")(out.reshape(b, n, inner))


class GEGLU(nn.Module):
    """Linear(C, 2·F) split into (a, g) → a · gelu_erf(g). x [..., C] → [..., F]."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        a, g = jnp.split(_dense(2 * self.features, self.dtype, "proj")(x), 2, axis=-1)
        return a * nn.gelu(g, approximate=False)


class FeedForward(nn.Module):
    """GEGLU(C → 4C) then Linear(4C → C); torch names net.0.proj, net.2 (net.1 is Dropout)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        h = GEGLU(4 * c, self.dtype, name="net_0")(x)
        return _dense(c, self.dtype, "net_2")(h)


class BasicTransformerBlock(nn.Module):
    """x + attn1(LN1 x); x + attn2(LN2 x) (also self-attention: no context); x + ff(LN3 x). x [B, N, C]."""

    heads: int
    dim_head: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = Attention(self.heads, self.dim_head, self.dtype, name="attn1")(_layer_norm(x, "norm1", self.dtype)) + x
        x = Attention(self.heads, self.dim_head, self.dtype, name="attn2")(_layer_norm(x, "norm2", self.dtype)) + x
        x = FeedForward(self.dtype, name="ff")(_layer_norm(x, "norm3", self.dtype)) + x
        return x


class SpatialTransformer(nn.Module):
    """GN(eps 1e-6) → 1×1 proj_in → tokens (h w) → depth × BasicTransformerBlock → 1×1 proj_out, + input.

    x [B, H, W, C] → [B, H, W, C].
    """

    heads: int
    dim_head: int
    depth: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        inner = self.heads * self.dim_head
        h = _group_norm(x, _ST_EPS, "norm", self.dtype)
        h = _conv(inner, 1, self.dtype, "proj_in")(h)
        h = h.reshape(b, hh * ww, inner)  # row-major (h, w): time-major tokens, as "b c h w -> b (h w) c"
        for d in range(self.depth):
            h = BasicTransformerBlock(self.heads, self.dim_head, self.dtype, name=f"transformer_blocks_{d}")(h)
        h = h.reshape(b, hh, ww, inner)
        return _conv(c, 1, self.dtype, "proj_out")(h) + x


class Downsample(nn.Module):
    """conv 3×3, stride 2, padding 1 on both sides. [B, H, W, C] → [B, H/2, W/2, C]."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv(x.shape[-1], 3, self.dtype, "op", strides=2)(x)


class UNetModel(nn.Module):
    """AudioSR's latent-diffusion UNet (v-prediction network), inference mode."""

    config: UNetConfig
    dtype: Any = jnp.float32

    def _apply_block(self, layers: list[Layer], prefix: str, h, emb):
        cfg = self.config
        for m, layer in enumerate(layers):
            name = f"{prefix}_{m}"
            if layer.kind == "conv":
                h = _conv(layer.cout, 3, self.dtype, name)(h)
            elif layer.kind == "res":
                h = ResBlock(layer.cout, self.dtype, name=name)(h, emb)
            elif layer.kind == "st":
                h = SpatialTransformer(layer.heads, layer.dim_head, cfg.transformer_depth, self.dtype,
                                       name=name)(h)
            elif layer.kind == "down":
                h = Downsample(self.dtype, name=name)(h)
            elif layer.kind == "up":
                h = Upsample(self.dtype, name=name)(h)
            else:  # pragma: no cover - unet_layout only emits the kinds above
                raise AssertionError(layer.kind)
        return h

    @nn.compact
    def __call__(self, x, timesteps) -> jax.Array:
        """x [B, H(time), W(freq), in_channels] → [B, H, W, out_channels]; timesteps [B] (int32 or float).

        H and W must be divisible by `config.downsample_factor` (a ValueError naming the shape otherwise).
        Output dtype is the compute dtype.
        """
        cfg = self.config
        f = cfg.downsample_factor
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet input must be [B, H, W, {cfg.in_channels}], got shape {tuple(x.shape)}")
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"UNet input shape {tuple(x.shape)}: H and W must be divisible by the "
                             f"downsample factor {f}")
        timesteps = jnp.asarray(timesteps)
        if timesteps.ndim == 0:
            timesteps = jnp.broadcast_to(timesteps, (x.shape[0],))
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"UNet timesteps must have shape [{x.shape[0]}], got {tuple(timesteps.shape)}")

        emb = timestep_embedding(timesteps, cfg.model_channels).astype(self.dtype)
        emb = _dense(cfg.time_embed_dim, self.dtype, "time_embed_0")(emb)
        emb = _dense(cfg.time_embed_dim, self.dtype, "time_embed_2")(nn.silu(emb))

        layout = unet_layout(cfg)
        h = x.astype(self.dtype)
        skips = []
        for n, layers in enumerate(layout["input_blocks"]):
            h = self._apply_block(layers, f"input_blocks_{n}", h, emb)
            skips.append(h)
        h = self._apply_block(layout["middle_block"][0], "middle_block", h, emb)
        for n, layers in enumerate(layout["output_blocks"]):
            h = jnp.concatenate([h, skips.pop()], axis=-1)  # torch cat([h, skip], dim=1)
            h = self._apply_block(layers, f"output_blocks_{n}", h, emb)

        h = nn.silu(_group_norm(h, _RES_EPS, "out_0", self.dtype))
        return _conv(cfg.out_channels, 3, self.dtype, "out_2")(h)
