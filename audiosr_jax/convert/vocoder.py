"""PyTorch ↔ Flax conversion of the HiFi-GAN vocoder (`first_stage_model.vocoder.*`).

Torch names are relative to `PREFIX`; the Flax paths are those of `audiosr_jax.models.vocoder.HiFiGAN`.
The cond-stage VAE carries a second, unused vocoder under `cond_stage_models.0.vae.vocoder.`; the same rules
apply with that prefix.

Upsample rates are not stored in any tensor shape. The release uses k = 2u at every level
((12,10,8,4,4) ↔ (6,5,4,2,2)), so `infer_config` reads u = k // 2 — also for k = 10, u = 5, where k-u is odd
and the layer yields one extra sample. Dilations are not in the shapes either; they keep the default (1, 3, 5).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from audiosr_jax.convert.rules import ConversionError, Rule, TensorSource, to_flax
from audiosr_jax.models.vocoder import HiFiGAN, VocoderConfig

__all__ = ["PREFIX", "rules", "infer_config", "convert", "param_shapes"]

PREFIX = "first_stage_model.vocoder."
_DEFAULT_DILATIONS = (1, 3, 5)


def rules(cfg: VocoderConfig) -> list[Rule]:
    """One rule per conv layer of the generator, in the reference's module order."""
    out = [Rule("conv_pre", ("conv_pre",), "conv1d")]
    for i in range(len(cfg.upsample_rates)):
        out.append(Rule(f"ups.{i}", (f"ups_{i}",), "conv_transpose1d"))
    for r in range(len(cfg.upsample_rates) * cfg.num_kernels):
        for j in range(len(cfg.resblock_dilation_sizes[r % cfg.num_kernels])):
            out.append(Rule(f"resblocks.{r}.convs1.{j}", (f"resblocks_{r}", f"convs1_{j}"), "conv1d"))
            out.append(Rule(f"resblocks.{r}.convs2.{j}", (f"resblocks_{r}", f"convs2_{j}"), "conv1d"))
    out.append(Rule("conv_post", ("conv_post",), "conv1d"))
    return out


def _count(source: TensorSource, pattern: str) -> int:
    """Number of consecutive indices n = 0, 1, ... for which `pattern.format(n)` is a key."""
    found = {int(m.group(1)) for k in source.keys() if (m := re.fullmatch(pattern.format(r"(\d+)"), k))}
    n = 0
    while n in found:
        n += 1
    return n


def infer_config(source: TensorSource) -> VocoderConfig:
    """Derive the architecture from tensor shapes alone; `source` is already narrowed to `PREFIX`.

    num_mels and the initial width come from conv_pre [C0, num_mels, 7]; the levels and their kernel sizes
    from ups.i [C0/2^i, C0/2^(i+1), k_i]; the resblock kernel sizes from the first level's resblocks; every
    other shape is then checked against that. Raises ConversionError naming the first inconsistent key.
    """
    where = source.origin

    def bad(key: str, shape, want: str) -> ConversionError:
        return ConversionError(f"{where}: {source.prefix + key} has shape {tuple(shape)}, expected {want}")

    def shape_of(key: str, rank: int):
        s = source.shape(key)  # raises ConversionError naming a missing key
        if len(s) != rank:
            raise bad(key, s, f"rank {rank}")
        return s

    if not source.has("conv_pre.weight") and source.has("conv_pre.weight_g"):
        raise ConversionError(f"{where}: {source.prefix}conv_pre has weight_g/weight_v (weight norm not removed); "
                              "the released AudioSR vocoder stores plain weights")
    c0, num_mels, kpre = shape_of("conv_pre.weight", 3)
    if kpre != 7:
        raise bad("conv_pre.weight", (c0, num_mels, kpre), "kernel size 7")
    levels = _count(source, r"ups\.{}\.weight")
    if levels == 0:
        raise ConversionError(f"{where}: missing key {source.prefix + 'ups.0.weight'!r}")
    if c0 % (2 ** levels):
        raise bad("conv_pre.weight", (c0, num_mels, kpre), f"output channels divisible by 2**{levels}")

    up_kernels = []
    for i in range(levels):
        key = f"ups.{i}.weight"
        cin, cout, k = shape_of(key, 3)
        want_in, want_out = c0 >> i, c0 >> (i + 1)
        if (cin, cout) != (want_in, want_out):
            raise bad(key, (cin, cout, k), f"[{want_in}, {want_out}, k]")
        if k < 2:
            raise bad(key, (cin, cout, k), "kernel size >= 2 (rate = k // 2)")
        up_kernels.append(k)

    n_res = _count(source, r"resblocks\.{}\.convs1\.0\.weight")
    if n_res == 0 or n_res % levels:
        raise ConversionError(f"{where}: found {n_res} resblocks under {source.prefix}resblocks., "
                              f"expected a positive multiple of the {levels} upsample levels")
    nk = n_res // levels
    res_kernels = []
    for r in range(n_res):
        ch = c0 >> (r // nk + 1)
        for j in range(len(_DEFAULT_DILATIONS)):
            for conv in ("convs1", "convs2"):
                key = f"resblocks.{r}.{conv}.{j}.weight"
                s = shape_of(key, 3)
                if r < nk and conv == "convs1" and j == 0:
                    res_kernels.append(s[2])
                want = (ch, ch, res_kernels[r % nk])
                if s != want:
                    raise bad(key, s, list(want))
    if any(k % 2 == 0 for k in res_kernels):
        raise bad("resblocks.0.convs1.0.weight", source.shape("resblocks.0.convs1.0.weight"),
                  "odd resblock kernel sizes")

    post = shape_of("conv_post.weight", 3)
    if post != (1, c0 >> levels, 7):
        raise bad("conv_post.weight", post, [1, c0 >> levels, 7])

    return VocoderConfig(num_mels=num_mels,
                         upsample_rates=tuple(k // 2 for k in up_kernels),
                         upsample_kernel_sizes=tuple(up_kernels),
                         upsample_initial_channel=c0,
                         resblock_kernel_sizes=tuple(res_kernels),
                         resblock_dilation_sizes=(_DEFAULT_DILATIONS,) * nk)


def param_shapes(cfg: VocoderConfig) -> dict:
    """The Flax param tree of `HiFiGAN(cfg)` as ShapeDtypeStructs (no memory allocated)."""
    mel = jax.ShapeDtypeStruct((1, 1, cfg.num_mels), jnp.float32)
    return jax.eval_shape(HiFiGAN(cfg).init, jax.random.PRNGKey(0), mel)["params"]


def convert(source: TensorSource, cfg: VocoderConfig | None = None) -> tuple[VocoderConfig, dict]:
    """Torch vocoder tensors (source narrowed to `PREFIX`) → (config, Flax params as numpy float32).

    The config is inferred from the shapes unless given; every key and shape is checked.
    """
    cfg = infer_config(source) if cfg is None else cfg
    return cfg, to_flax(rules(cfg), source, param_shapes(cfg))
