"""PyTorch ↔ Flax rules for the VAE (`AutoencoderKL`), and its architecture read from tensor shapes.

Torch names are relative to the VAE prefix (`first_stage_model.` or `cond_stage_models.0.vae.`); the
`vocoder.*` keys that share that prefix are not read here. The Flax side flattens torch's nested module
lists into one name per block: `encoder.down.1.block.0.norm1` → encoder/down_1_block_0/norm1,
`decoder.mid.attn_1.q` → decoder/mid_attn_1/q (see `audiosr_jax.models.vae`).
"""

from __future__ import annotations

from audiosr_jax.convert.rules import ConversionError, Rule, TensorSource
from audiosr_jax.models.vae import VAEConfig

__all__ = ["rules", "infer_config"]


def _resnet(torch: str, flax: tuple[str, ...], shortcut: bool) -> list[Rule]:
    out = [Rule(f"{torch}.norm1", (*flax, "norm1"), "norm"),
           Rule(f"{torch}.conv1", (*flax, "conv1"), "conv2d"),
           Rule(f"{torch}.norm2", (*flax, "norm2"), "norm"),
           Rule(f"{torch}.conv2", (*flax, "conv2"), "conv2d")]
    if shortcut:
        out.append(Rule(f"{torch}.nin_shortcut", (*flax, "nin_shortcut"), "conv2d"))
    return out


def _mid(part: str) -> list[Rule]:
    attn = (part, "mid_attn_1")
    return [*_resnet(f"{part}.mid.block_1", (part, "mid_block_1"), False),
            Rule(f"{part}.mid.attn_1.norm", (*attn, "norm"), "norm"),
            *(Rule(f"{part}.mid.attn_1.{n}", (*attn, n), "conv2d") for n in ("q", "k", "v", "proj_out")),
            *_resnet(f"{part}.mid.block_2", (part, "mid_block_2"), False)]


def rules(cfg: VAEConfig) -> list[Rule]:
    """Every layer of the VAE with config `cfg`: encoder, decoder, quant_conv, post_quant_conv."""
    widths = [cfg.ch * m for m in cfg.ch_mult]
    levels = len(widths)
    out = [Rule("encoder.conv_in", ("encoder", "conv_in"), "conv2d")]
    block_in = cfg.ch
    for lv, width in enumerate(widths):
        for b in range(cfg.num_res_blocks):
            out += _resnet(f"encoder.down.{lv}.block.{b}", ("encoder", f"down_{lv}_block_{b}"), block_in != width)
            block_in = width
        if lv != levels - 1:
            out.append(Rule(f"encoder.down.{lv}.downsample.conv", ("encoder", f"down_{lv}_downsample", "conv"),
                            "conv2d"))
    out += _mid("encoder")
    out += [Rule("encoder.norm_out", ("encoder", "norm_out"), "norm"),
            Rule("encoder.conv_out", ("encoder", "conv_out"), "conv2d")]

    out.append(Rule("decoder.conv_in", ("decoder", "conv_in"), "conv2d"))
    out += _mid("decoder")
    block_in = widths[-1]
    for lv in reversed(range(levels)):  # torch order of evaluation; key names carry the level anyway
        for b in range(cfg.num_res_blocks + 1):
            out += _resnet(f"decoder.up.{lv}.block.{b}", ("decoder", f"up_{lv}_block_{b}"), block_in != widths[lv])
            block_in = widths[lv]
        if lv != 0:
            out.append(Rule(f"decoder.up.{lv}.upsample.conv", ("decoder", f"up_{lv}_upsample", "conv"), "conv2d"))
    out += [Rule("decoder.norm_out", ("decoder", "norm_out"), "norm"),
            Rule("decoder.conv_out", ("decoder", "conv_out"), "conv2d"),
            Rule("quant_conv", ("quant_conv",), "conv2d"),
            Rule("post_quant_conv", ("post_quant_conv",), "conv2d")]
    return out


def _bad(source: TensorSource, key: str, problem: str) -> ConversionError:
    return ConversionError(f"{source.origin}: key {source.prefix + key!r} {problem}")


def _conv_shape(source: TensorSource, key: str, kernel: int) -> tuple[int, int]:
    """(out, in) channels of a torch Conv2d weight, checking it is 4-D with a square `kernel`."""
    shape = source.shape(key)
    if len(shape) != 4 or shape[2:] != (kernel, kernel):
        raise _bad(source, key, f"has shape {shape}, expected a {kernel}x{kernel} Conv2d weight [out, in, "
                   f"{kernel}, {kernel}]")
    return shape[0], shape[1]


def infer_config(source: TensorSource) -> VAEConfig:
    """The VAEConfig of the VAE under `source` (already narrowed to the VAE prefix), from shapes alone.

    ch / in_channels from encoder.conv_in; ch_mult from each encoder level's first block; num_res_blocks
    by counting encoder level-0 blocks; z_channels from encoder.conv_out; embed_dim from quant_conv; out_ch
    from decoder.conv_out. A source with no decoder.* and no post_quant_conv keys at all (an encoder-only
    conditioning VAE) is accepted, with out_ch = in_channels. Raises ConversionError naming the key on a
    missing key or an inconsistent shape (the full per-tensor check is `to_flax` against the model's shapes).
    """
    ch, in_channels = _conv_shape(source, "encoder.conv_in.weight", 3)
    if ch <= 0:
        raise _bad(source, "encoder.conv_in.weight", "has no output channels")
    ch_mult = []
    while source.has(f"encoder.down.{len(ch_mult)}.block.0.conv1.weight"):
        key = f"encoder.down.{len(ch_mult)}.block.0.conv1.weight"
        width, _ = _conv_shape(source, key, 3)
        if width % ch:
            raise _bad(source, key, f"has {width} output channels, not a multiple of ch={ch}")
        ch_mult.append(width // ch)
    if not ch_mult:
        source.shape("encoder.down.0.block.0.conv1.weight")  # raises "missing key"
    num_res_blocks = 0
    while source.has(f"encoder.down.0.block.{num_res_blocks}.conv1.weight"):
        num_res_blocks += 1

    key = "encoder.conv_out.weight"
    double_z, _ = _conv_shape(source, key, 3)
    if double_z % 2:
        raise _bad(source, key, f"has {double_z} output channels; expected 2*z_channels (an even number)")
    z_channels = double_z // 2
    key = "quant_conv.weight"
    q_out, q_in = _conv_shape(source, key, 1)
    if q_out % 2 or q_in != double_z:
        raise _bad(source, key, f"has shape {source.shape(key)}, expected [2*embed_dim, {double_z}, 1, 1]")
    embed_dim = q_out // 2
    if not source.has("post_quant_conv.weight") and not any(k.startswith("decoder.") for k in source.keys()):
        # Encoder-only VAE (a conditioning VAE stored without its decoder): nothing fixes out_ch, which only
        # the decoder uses; take the released model's symmetry (out_ch == in_channels).
        out_ch = in_channels
    else:
        key = "post_quant_conv.weight"
        if _conv_shape(source, key, 1) != (z_channels, embed_dim):
            raise _bad(source, key, f"has shape {source.shape(key)}, expected [{z_channels}, {embed_dim}, 1, 1]")
        out_ch, _ = _conv_shape(source, "decoder.conv_out.weight", 3)
        # The decoder must have the encoder's depth: its top level has num_res_blocks + 1 blocks, no more.
        top = len(ch_mult) - 1
        for key, present in ((f"decoder.up.{top}.block.{num_res_blocks}.conv1.weight", True),
                             (f"decoder.up.{top}.block.{num_res_blocks + 1}.conv1.weight", False),
                             (f"decoder.up.{top + 1}.block.0.conv1.weight", False)):
            if source.has(key) != present:
                if present:
                    source.shape(key)  # raises "missing key"
                raise _bad(source, key, "is present, but the encoder implies a smaller decoder")
    try:
        return VAEConfig(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels,
                         embed_dim=embed_dim, in_channels=in_channels, out_ch=out_ch)
    except ValueError as e:
        raise _bad(source, "encoder.conv_in.weight", f"gives an unsupported architecture: {e}") from None
