"""Latent-diffusion UNet: sizes, shapes, timestep embedding, conversion, and a functional torch forward."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.convert import unet as cu
from audiosr_jax.convert.rules import ConversionError, TensorSource, expected_keys, to_flax, to_torch
from audiosr_jax.models.unet import UNetConfig, UNetModel, timestep_embedding
from audiosr_jax.lab.synthetic import synthetic_state_dict


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _shapes(cfg: UNetConfig, h: int = 64, w: int = 32):
    x = jax.ShapeDtypeStruct((1, h, w, cfg.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(UNetModel(cfg).init, jax.random.PRNGKey(0), x, t)["params"]


@pytest.fixture(scope="module")
def full_shapes():
    return _shapes(UNetConfig())


@pytest.fixture(scope="module")
def reduced_shapes():
    return _shapes(UNetConfig.reduced())


def _torch_shape_source(cfg, flax_shapes, origin="shapes-only") -> TensorSource:
    """A shape-only torch source derived from the Flax param shapes (independent of `cu.torch_shapes`)."""
    tensors = {}
    for rule in cu.rules(cfg):
        for key, leaf, _, inv in rule.params():
            leaf_shape = flax_shapes
            for p in (*rule.flax, leaf):
                leaf_shape = leaf_shape[p]
            # Zero-stride view: the inverse layout transform gives the torch shape without allocating.
            view = inv(np.broadcast_to(np.zeros((), np.float32), leaf_shape.shape))
            tensors[cu.PREFIX + key] = jax.ShapeDtypeStruct(view.shape, jnp.float32)
    return TensorSource(tensors, cu.PREFIX, origin)


# ----------------------------------------------------------------------------------------------- sizes

def test_full_size_param_count_and_breakdown(full_shapes):
    assert _count(full_shapes) == 258_195_088
    sts = {k: v for k, v in full_shapes.items() if "proj_in" in v}
    res = {k: v for k, v in full_shapes.items() if "in_layers_0" in v}
    assert len(sts) == 32 and _count(sts) == 155_288_320
    assert len(res) == 22 and _count(res) == 94_852_608
    assert _count(full_shapes["time_embed_0"]) + _count(full_shapes["time_embed_2"]) == 328_704
    # Table of docs/design.md §UNet: heads × 32 at every attention level, inner width = channels.
    assert full_shapes["input_blocks_4_1"]["transformer_blocks_0"]["attn1"]["to_q"]["kernel"].shape == (256, 256)
    assert full_shapes["middle_block_2"]["transformer_blocks_0"]["ff"]["net_0"]["proj"]["kernel"].shape == (640, 5120)
    assert full_shapes["output_blocks_0_0"]["in_layers_2"]["kernel"].shape == (3, 3, 1280, 640)
    assert full_shapes["output_blocks_11_0"]["skip_connection"]["kernel"].shape == (1, 1, 256, 128)
    assert full_shapes["out_2"]["kernel"].shape == (3, 3, 128, 16)


def test_reduced_param_count(reduced_shapes):
    assert _count(reduced_shapes) == 16_217_008  # "UNet 16.2 M" of the reference's reduced variant


def test_torch_key_count_full():
    # 1,104 `model.diffusion_model.*` keys in the released checkpoint (docs/design.md §Checkpoint format).
    shapes = cu.torch_shapes(UNetConfig())
    assert len(shapes) == 1104 == len(expected_keys(cu.rules(UNetConfig())))
    assert sum(int(np.prod(s)) for s in shapes.values()) == 258_195_088
    assert shapes["input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight"] == (2048, 256)
    assert shapes["input_blocks.3.0.op.weight"] == (128, 128, 3, 3)
    assert shapes["output_blocks.2.3.conv.weight"] == (640, 640, 3, 3)  # ResBlock, ST, ST, Upsample
    assert "input_blocks.1.0.skip_connection.weight" not in shapes


# ----------------------------------------------------------------------------------------------- config

def test_config_dict_round_trip_and_validation():
    for cfg in (UNetConfig(), UNetConfig.reduced(), UNetConfig.tiny()):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert UNetConfig.from_dict(d) == cfg
    assert UNetConfig().downsample_factor == 8 and UNetConfig.tiny().downsample_factor == 2
    assert UNetConfig(attention_resolutions=[2, 8, 4]) == UNetConfig()
    with pytest.raises(ValueError, match="multiple of 32"):
        UNetConfig(model_channels=48)
    with pytest.raises(ValueError, match="start with 1"):
        UNetConfig(channel_mult=(2, 4))
    with pytest.raises(ValueError, match="num_head_channels"):
        UNetConfig(model_channels=32, attention_resolutions=(1,), num_head_channels=64)


# ----------------------------------------------------------------------------------------------- forward

def test_timestep_embedding_cos_then_sin():
    t = np.array([0, 1, 37, 999], np.int32)
    emb = np.asarray(timestep_embedding(jnp.asarray(t), 128))
    assert emb.shape == (4, 128) and emb.dtype == np.float32
    freqs = np.exp(-math.log(10000.0) * np.arange(64) / 64)
    args = t[:, None].astype(np.float64) * freqs[None]
    np.testing.assert_allclose(emb[:, :64], np.cos(args), atol=2e-4)
    np.testing.assert_allclose(emb[:, 64:], np.sin(args), atol=2e-4)
    np.testing.assert_array_equal(emb[0], np.r_[np.ones(64), np.zeros(64)])  # t=0: cos=1 first, sin=0 after
    odd = np.asarray(timestep_embedding(jnp.array([2.5]), 7))
    np.testing.assert_allclose(odd[0, :6], np.r_[np.cos(2.5 * np.exp(-math.log(1e4) * np.arange(3) / 3)),
                                                 np.sin(2.5 * np.exp(-math.log(1e4) * np.arange(3) / 3))],
                               atol=1e-6)
    assert odd[0, 6] == 0.0


@pytest.fixture(scope="module")
def tiny_setup():
    cfg = UNetConfig.tiny()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 4, cfg.in_channels))
    t = jnp.array([999, 3], jnp.int32)
    model = UNetModel(cfg)
    # Synthetic (perturbed, nothing zero-initialised) weights, via the torch-side key names.
    sd = synthetic_state_dict(cu.torch_shapes(cfg), seed=3)
    params = to_flax(cu.rules(cfg), TensorSource(sd, "", "synthetic"), _shapes(cfg, 8, 4))
    y = np.asarray(jax.jit(model.apply)({"params": params}, x, t))  # compiled once for the module
    return cfg, model, params, sd, x, t, y


def test_tiny_forward_shapes_and_errors(tiny_setup):
    cfg, model, params, _, x, t, y = tiny_setup
    assert y.shape == (2, 8, 4, cfg.out_channels) and y.dtype == np.float32
    assert np.all(np.isfinite(y)) and np.abs(y).max() > 1e-3
    v = {"params": params}
    # Traced only (no compile): float timesteps accepted, bad shapes rejected with the shape in the message.
    assert jax.eval_shape(model.apply, v, x, t.astype(jnp.float32) + 0.5).shape == y.shape
    with pytest.raises(ValueError, match=r"\(2, 5, 4, 8\)"):
        jax.eval_shape(model.apply, v, jnp.zeros((2, 5, 4, cfg.in_channels)), t)
    with pytest.raises(ValueError, match=r"\(2, 8, 3, 8\)"):
        jax.eval_shape(model.apply, v, jnp.zeros((2, 8, 3, cfg.in_channels)), t)
    with pytest.raises(ValueError, match=r"\(2, 8, 4, 3\)"):
        jax.eval_shape(model.apply, v, jnp.zeros((2, 8, 4, 3)), t)


def test_bfloat16_compute_keeps_float32_params(tiny_setup):
    cfg, _, params, _, x, t, _ = tiny_setup
    model = UNetModel(cfg, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    assert jax.eval_shape(model.apply, {"params": params}, x, t).dtype == jnp.bfloat16


# ------------------------------------------------------------------------- functional torch reference

def _torch_unet(sd, cfg, x, t):
    """The reference UNet's forward written with torch.nn.functional on a state dict (NCHW)."""
    import torch
    import torch.nn.functional as F

    from audiosr_jax.models.unet import unet_layout

    w = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    lin = lambda p, h: F.linear(h, w[p + ".weight"], w.get(p + ".bias"))
    conv = lambda p, h, **kw: F.conv2d(h, w[p + ".weight"], w[p + ".bias"], **kw)
    gn = lambda p, h, eps: F.group_norm(h, 32, w[p + ".weight"], w[p + ".bias"], eps)
    ln = lambda p, h: F.layer_norm(h, h.shape[-1:], w[p + ".weight"], w[p + ".bias"], 1e-5)

    half = cfg.model_channels // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    emb = lin("time_embed.2", F.silu(lin("time_embed.0", emb)))

    def attn(p, h, heads):
        b, n, c = h.shape
        q, k, v = (lin(f"{p}.{n_}", h).reshape(b, n, heads, -1).transpose(1, 2) for n_ in ("to_q", "to_k", "to_v"))
        a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
        return lin(f"{p}.to_out.0", (a @ v).transpose(1, 2).reshape(b, n, -1))

    def run(p, layer, h):
        if layer.kind == "conv":
            return conv(p, h, padding=1)
        if layer.kind == "res":
            r = conv(f"{p}.in_layers.2", F.silu(gn(f"{p}.in_layers.0", h, 1e-5)), padding=1)
            r = r + lin(f"{p}.emb_layers.1", F.silu(emb))[:, :, None, None]
            r = conv(f"{p}.out_layers.3", F.silu(gn(f"{p}.out_layers.0", r, 1e-5)), padding=1)
            skip = conv(f"{p}.skip_connection", h) if layer.cin != layer.cout else h
            return skip + r
        if layer.kind == "st":
            b, c, hh, ww = h.shape
            s = conv(f"{p}.proj_in", gn(f"{p}.norm", h, 1e-6))
            s = s.flatten(2).transpose(1, 2)  # b (h w) c
            tb = f"{p}.transformer_blocks.0"
            s = attn(f"{tb}.attn1", ln(f"{tb}.norm1", s), layer.heads) + s
            s = attn(f"{tb}.attn2", ln(f"{tb}.norm2", s), layer.heads) + s
            a, g = lin(f"{tb}.ff.net.0.proj", ln(f"{tb}.norm3", s)).chunk(2, -1)
            s = lin(f"{tb}.ff.net.2", a * F.gelu(g)) + s
            s = s.transpose(1, 2).reshape(b, -1, hh, ww)
            return conv(f"{p}.proj_out", s) + h
        if layer.kind == "down":
            return conv(f"{p}.op", h, stride=2, padding=1)
        return conv(f"{p}.conv", F.interpolate(h, scale_factor=2, mode="nearest"), padding=1)

    layout = unet_layout(cfg)
    h, skips = x, []
    for n, blk in enumerate(layout["input_blocks"]):
        for m, layer in enumerate(blk):
            h = run(f"input_blocks.{n}.{m}", layer, h)
        skips.append(h)
    for m, layer in enumerate(layout["middle_block"][0]):
        h = run(f"middle_block.{m}", layer, h)
    for n, blk in enumerate(layout["output_blocks"]):
        h = torch.cat([h, skips.pop()], 1)
        for m, layer in enumerate(blk):
            h = run(f"output_blocks.{n}.{m}", layer, h)
    return conv("out.2", F.silu(gn("out.0", h, 1e-5)), padding=1)


def test_tiny_matches_functional_torch_forward(tiny_setup):
    torch = pytest.importorskip("torch")
    cfg, model, params, sd, x, t, y = tiny_setup
    with torch.no_grad():
        yr = _torch_unet(sd, cfg, torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)),
                         torch.from_numpy(np.array(t))).numpy().transpose(0, 2, 3, 1)
    assert np.abs(y - yr).max() / np.abs(yr).max() < 1e-5


# ----------------------------------------------------------------------------------------------- conversion

def test_conversion_round_trip(tiny_setup):
    cfg, model, params, sd, x, t, _ = tiny_setup
    sd2 = to_torch(cu.rules(cfg), params)
    assert sd2.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)
    # Flax → torch → Flax with the layout transforms exercised on freshly initialised params.
    # Flax → torch → Flax on a random tree of the model's shapes (every layout transform exercised).
    rng = np.random.default_rng(7)
    shapes = _shapes(cfg, 8, 4)
    fresh = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    back = to_flax(cu.rules(cfg), TensorSource(to_torch(cu.rules(cfg), fresh, cu.PREFIX), cu.PREFIX), shapes)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, fresh)
    assert cu.flax_path("middle_block.1.transformer_blocks.0.ff.net.0.proj") == (
        "middle_block_1", "transformer_blocks_0", "ff", "net_0", "proj")


def test_infer_config_full_and_reduced(full_shapes, reduced_shapes):
    assert cu.infer_config(_torch_shape_source(UNetConfig(), full_shapes)) == UNetConfig()
    assert cu.infer_config(_torch_shape_source(UNetConfig.reduced(), reduced_shapes)) == UNetConfig.reduced()


@pytest.mark.parametrize("cfg", [
    UNetConfig.tiny(),
    UNetConfig(in_channels=4, out_channels=2, model_channels=32, channel_mult=(1, 2, 1), num_res_blocks=2,
               attention_resolutions=(1, 4), transformer_depth=2, extra_sa_layer=False),
    UNetConfig(model_channels=64, channel_mult=(1,), num_res_blocks=1, attention_resolutions=()),
])
def test_infer_config_variants(cfg):
    assert cu.infer_config(_torch_shape_source(cfg, _shapes(cfg, 8, 8))) == cfg


def test_conversion_errors_name_the_key():
    cfg = UNetConfig.tiny()
    shapes = {cu.PREFIX + k: np.zeros(s, np.float32) for k, s in cu.torch_shapes(cfg).items()}
    key = cu.PREFIX + "output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"

    missing = dict(shapes)
    del missing[key]
    with pytest.raises(ConversionError, match=r"output_blocks\.1\.1\.transformer_blocks\.0\.attn2\.to_k\.weight"):
        cu.infer_config(TensorSource(missing, cu.PREFIX, "ckpt.pth"))
    with pytest.raises(ConversionError, match=r"ckpt\.pth.*attn2\.to_k\.weight"):
        to_flax(cu.rules(cfg), TensorSource(missing, cu.PREFIX, "ckpt.pth"))

    bad = dict(shapes)
    bad[key] = np.zeros((64, 63), np.float32)
    with pytest.raises(ConversionError, match=r"attn2\.to_k\.weight.*\(64, 63\)"):
        cu.infer_config(TensorSource(bad, cu.PREFIX, "ckpt.pth"))
    with pytest.raises(ConversionError, match=r"attn2\.to_k\.weight"):
        to_flax(cu.rules(cfg), TensorSource(bad, cu.PREFIX, "ckpt.pth"), _shapes(cfg, 8, 4))

    bad_mult = dict(shapes)
    k2 = cu.PREFIX + "input_blocks.1.0.out_layers.3.weight"
    bad_mult[k2] = np.zeros((48, 32, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"input_blocks\.1\.0\.out_layers\.3\.weight"):
        cu.infer_config(TensorSource(bad_mult, cu.PREFIX, "ckpt.pth"))

    extra = dict(shapes)
    extra[cu.PREFIX + "label_emb.weight"] = np.zeros((3, 128), np.float32)
    with pytest.raises(ConversionError, match=r"label_emb\.weight"):
        cu.infer_config(TensorSource(extra, cu.PREFIX, "ckpt.pth"))

    with pytest.raises(ConversionError, match=r"model\.diffusion_model\.input_blocks\.0\.0\.weight"):
        cu.infer_config(TensorSource({}, cu.PREFIX, "empty.pth"))
