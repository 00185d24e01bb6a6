"""PyTorch ↔ Flax rules for the latent-diffusion UNet (state_dict prefix `model.diffusion_model.`).

Torch module names map to Flax paths by joining every numeric index to the name before it:
"input_blocks.1.0.in_layers.2" → ("input_blocks_1_0", "in_layers_2"),
"middle_block.1.transformer_blocks.0.ff.net.0.proj" → ("middle_block_1", "transformer_blocks_0", "ff",
"net_0", "proj"). The block structure comes from `audiosr_jax.models.unet.unet_layout`, shared with the model.

The EMA copy (`model_ema.*`, dots removed from the names) is not read: the released sampler uses
`model.diffusion_model.*`.
"""

from __future__ import annotations

import re

from audiosr_jax.convert.rules import ConversionError, Rule, TensorSource
from audiosr_jax.models.unet import Layer, UNetConfig, unet_layout

__all__ = ["PREFIX", "rules", "torch_shapes", "infer_config", "flax_path"]

PREFIX = "model.diffusion_model."


def flax_path(torch_name: str) -> tuple[str, ...]:
    """"input_blocks.1.0.in_layers.2" → ("input_blocks_1_0", "in_layers_2")."""
    parts: list[str] = []
    for p in torch_name.split("."):
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    return tuple(parts)


def _layers(cfg: UNetConfig):
    """(torch module name, kind, torch weight shape) of every layer with parameters, in state_dict order."""
    out = []

    def conv(name, cin, cout, k):
        out.append((name, "conv2d", (cout, cin, k, k)))

    def lin(name, cin, cout, bias=True):
        out.append((name, "linear" if bias else "linear_nobias", (cout, cin)))

    def norm(name, c):
        out.append((name, "norm", (c,)))

    def block(prefix, layer: Layer):
        if layer.kind == "conv":
            conv(prefix, layer.cin, layer.cout, 3)
        elif layer.kind == "res":
            norm(f"{prefix}.in_layers.0", layer.cin)
            conv(f"{prefix}.in_layers.2", layer.cin, layer.cout, 3)
            lin(f"{prefix}.emb_layers.1", cfg.time_embed_dim, layer.cout)
            norm(f"{prefix}.out_layers.0", layer.cout)
            conv(f"{prefix}.out_layers.3", layer.cout, layer.cout, 3)
            if layer.cin != layer.cout:
                conv(f"{prefix}.skip_connection", layer.cin, layer.cout, 1)
        elif layer.kind == "st":
            c, inner = layer.cin, layer.heads * layer.dim_head
            norm(f"{prefix}.norm", c)
            conv(f"{prefix}.proj_in", c, inner, 1)
            for d in range(cfg.transformer_depth):
                tb = f"{prefix}.transformer_blocks.{d}"
                for attn in ("attn1", "ff", "attn2"):  # torch definition order (ff before attn2)
                    if attn == "ff":
                        lin(f"{tb}.ff.net.0.proj", inner, 8 * inner)
                        lin(f"{tb}.ff.net.2", 4 * inner, inner)
                        continue
                    for qkv in ("to_q", "to_k", "to_v"):
                        lin(f"{tb}.{attn}.{qkv}", inner, inner, bias=False)
                    lin(f"{tb}.{attn}.to_out.0", inner, inner)
                for i in (1, 2, 3):
                    norm(f"{tb}.norm{i}", inner)
            conv(f"{prefix}.proj_out", inner, c, 1)
        elif layer.kind == "down":
            conv(f"{prefix}.op", layer.cin, layer.cout, 3)
        elif layer.kind == "up":
            conv(f"{prefix}.conv", layer.cin, layer.cout, 3)
        else:  # pragma: no cover
            raise AssertionError(layer.kind)

    lin("time_embed.0", cfg.model_channels, cfg.time_embed_dim)
    lin("time_embed.2", cfg.time_embed_dim, cfg.time_embed_dim)
    layout = unet_layout(cfg)
    for group in ("input_blocks", "middle_block", "output_blocks"):
        for n, blk in enumerate(layout[group]):
            head = group if group == "middle_block" else f"{group}.{n}"
            for m, layer in enumerate(blk):
                block(f"{head}.{m}", layer)
    norm("out.0", cfg.model_channels)
    conv("out.2", cfg.model_channels, cfg.out_channels, 3)
    return out


def rules(cfg: UNetConfig) -> list[Rule]:
    """One Rule per UNet layer; torch names are relative to `model.diffusion_model.`."""
    return [Rule(name, flax_path(name), kind) for name, kind, _ in _layers(cfg)]


def torch_shapes(cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    """{torch key (relative to the prefix): shape} of every UNet tensor, e.g. for `synthetic_state_dict`."""
    shapes = {}
    for name, kind, wshape in _layers(cfg):
        shapes[f"{name}.weight"] = wshape
        if kind != "linear_nobias":
            shapes[f"{name}.bias"] = (wshape[0],)
    return shapes


_INPUT_BLOCK = re.compile(r"^input_blocks\.(\d+)\.")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.")
_TBLOCK = re.compile(r"^middle_block\.1\.transformer_blocks\.(\d+)\.")


def infer_config(source: TensorSource, *, num_head_channels: int = 32) -> UNetConfig:
    """Derive the UNet architecture from tensor shapes alone (`source` is prefixed at the UNet).

    Reads in/out channels, model_channels, channel_mult, num_res_blocks, attention levels, extra_sa_layer
    and transformer_depth, then checks every expected tensor's shape. Head width cannot be read from shapes
    (q/k/v are [inner, C] with inner = C either way), so `num_head_channels` is taken as given (32 in the
    released model). Raises ConversionError naming the offending key.
    """
    org = f"{source.origin}: UNet"

    def fail(key, why):
        raise ConversionError(f"{org} key {source.prefix + key!r}: {why}")

    keys = source.keys()
    w0 = "input_blocks.0.0.weight"
    s = source.shape(w0)
    if len(s) != 4:
        fail(w0, f"expected a 4-D conv weight, got shape {s}")
    mc, in_ch = s[0], s[1]
    so = source.shape("out.2.weight")
    if len(so) != 4:
        fail("out.2.weight", f"expected a 4-D conv weight, got shape {so}")
    out_ch = so[0]

    n_inputs = 1 + max((int(m.group(1)) for k in keys if (m := _INPUT_BLOCK.match(k))), default=0)
    downs = sorted(n for n in range(n_inputs) if source.has(f"input_blocks.{n}.0.op.weight"))
    if downs:
        num_res = downs[0] - 1
        n_levels = len(downs) + 1
    else:
        num_res = n_inputs - 1
        n_levels = 1
    if num_res < 1 or n_inputs != 1 + n_levels * num_res + (n_levels - 1):
        fail(f"input_blocks.{n_inputs - 1}.0.in_layers.2.weight",
             f"input_blocks 0..{n_inputs - 1} with downsamples at {downs} do not form a UNet")

    mults, attn = [], []
    has_st2 = None
    for lvl in range(n_levels):
        n = 1 + lvl * (num_res + 1)  # first ResBlock of the level
        key = f"input_blocks.{n}.0.out_layers.3.weight"
        cout = source.shape(key)[0]
        if cout % mc:
            fail(key, f"{cout} output channels is not a multiple of model_channels={mc}")
        mults.append(cout // mc)
        if source.has(f"input_blocks.{n}.1.norm.weight"):
            attn.append(2 ** lvl)
            st2 = source.has(f"input_blocks.{n}.2.norm.weight")
            if has_st2 is not None and st2 != has_st2:
                fail(f"input_blocks.{n}.2.norm.weight", "inconsistent number of SpatialTransformers per block")
            has_st2 = st2
    n_middle = 1 + max((int(m.group(1)) for k in keys if (m := _MIDDLE.match(k))), default=-1)
    if n_middle not in (3, 4):
        fail(f"middle_block.{n_middle - 1}.in_layers.0.weight",
             f"middle block has {n_middle} modules, expected 3 or 4")
    extra_sa = n_middle == 4
    if has_st2 is not None and has_st2 != extra_sa:
        fail("middle_block.2.norm.weight", "middle block and input blocks disagree on extra_sa_layer")
    depth = 1 + max((int(m.group(1)) for k in keys if (m := _TBLOCK.match(k))), default=-1)
    if depth < 1:
        fail("middle_block.1.transformer_blocks.0.norm1.weight", "missing")

    try:
        cfg = UNetConfig(in_channels=in_ch, out_channels=out_ch, model_channels=mc, channel_mult=tuple(mults),
                         num_res_blocks=num_res, attention_resolutions=tuple(attn),
                         num_head_channels=num_head_channels, transformer_depth=depth, extra_sa_layer=extra_sa)
    except ValueError as e:
        raise ConversionError(f"{org}: inferred an invalid architecture from {source.prefix + w0!r}: {e}") from None

    want = torch_shapes(cfg)
    for key, shape in want.items():
        got = source.shape(key)  # names the key if it is missing
        if got != shape:
            fail(key, f"shape {got}, expected {shape} for the inferred architecture")
    unexpected = sorted(set(keys) - set(want))
    if unexpected:
        fail(unexpected[0], f"unexpected for the inferred architecture ({len(unexpected)} unexpected key(s))")
    return cfg
