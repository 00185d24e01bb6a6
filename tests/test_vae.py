"""VAE (AutoencoderKL): parameter counts, shapes, numerics of the building blocks, conversion rules."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.convert import vae as cv
from audiosr_jax.convert.rules import ConversionError, TensorSource, expected_keys, to_flax, to_torch
from audiosr_jax.models.vae import (AttnBlock, AutoencoderKL, Downsample, Upsample, VAEConfig,
                                    posterior_sample)

PREFIXES = ("first_stage_model.", "cond_stage_models.0.vae.")


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _shapes(cfg, t=64, f=256):
    mel = jax.ShapeDtypeStruct((2, t, f, cfg.in_channels), jnp.float32)
    return jax.eval_shape(AutoencoderKL(cfg).init, jax.random.PRNGKey(0), mel)["params"]


def _shape_only_source(cfg, prefix, extra=None):
    """A TensorSource holding shape-only stand-ins (torch layout) for every VAE key, plus vocoder keys."""
    flax_shapes = _shapes(cfg)
    fake = {}
    for rule in cv.rules(cfg):
        for key, leaf, _, inv in rule.params():
            want = flax_shapes
            for p in (*rule.flax, leaf):
                want = want[p]
            # The inverse layout maps are views, so a broadcast scalar gives the torch shape for free.
            shape = inv(np.broadcast_to(np.zeros((), np.bool_), want.shape)).shape
            fake[prefix + key] = jax.ShapeDtypeStruct(shape, jnp.float32)
    fake[prefix + "vocoder.conv_pre.weight"] = jax.ShapeDtypeStruct((1536, 256, 7), jnp.float32)
    fake.update(extra or {})
    return TensorSource(fake, origin="fake.pth").sub(prefix)


def _random_params(shapes, seed=0):
    """Random float32 params of the given shape tree without compiling `init` (kernels ~ N(0, 1/fan_in),
    norm scales 1 ± 0.1, biases ± 0.1), so every layer matters."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            return (rng.standard_normal(x.shape) / np.sqrt(np.prod(x.shape[:-1]))).astype(np.float32)
        base = 1.0 if name == "scale" else 0.0
        return (base + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


class _Tiny:
    """The tiny VAE, random params, a mel, and encode/decode jitted once for the whole module."""

    def __init__(self):
        self.cfg = VAEConfig.tiny()
        self.model = AutoencoderKL(self.cfg)
        self.mel = (jax.random.normal(jax.random.PRNGKey(1), (2, 16, 24, self.cfg.in_channels)) - 4.0)
        self.params = _random_params(jax.eval_shape(self.model.init, jax.random.PRNGKey(0), self.mel)["params"])
        self.encode = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=AutoencoderKL.encode))
        self.decode = jax.jit(lambda p, z: self.model.apply({"params": p}, z, method=AutoencoderKL.decode))

    def __iter__(self):  # cfg, model, params, mel = tiny
        return iter((self.cfg, self.model, self.params, self.mel))


@pytest.fixture(scope="module")
def tiny():
    return _Tiny()


# ---------------------------------------------------------------------------------------------- config


def test_config_defaults_and_dict_roundtrip():
    cfg = VAEConfig()
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.embed_dim) == (128, (1, 2, 4, 8), 2, 16, 16)
    assert cfg.downsample_factor == 8 and VAEConfig.tiny().downsample_factor == 2
    for c in (cfg, VAEConfig.reduced(), VAEConfig.tiny()):
        d = json.loads(json.dumps(c.to_dict()))
        assert isinstance(d["ch_mult"], list)
        assert VAEConfig.from_dict(d) == c
    with pytest.raises(ValueError):
        VAEConfig(ch=48)  # 48 channels cannot form 32 groups


# ---------------------------------------------------------------------------------------- param counts


def test_full_size_param_counts_match_reference():
    counts = {k: _count(v) for k, v in _shapes(VAEConfig()).items()}
    assert counts == {"encoder": 90_010_272, "decoder": 133_523_969, "quant_conv": 1_056, "post_quant_conv": 272}
    leaves = jax.tree_util.tree_leaves(_shapes(VAEConfig()))
    assert all(x.dtype == jnp.float32 for x in leaves)


def test_reduced_param_count():
    assert _count(_shapes(VAEConfig.reduced())) == 14_074_993


def test_full_size_shapes():
    cfg = VAEConfig()
    params = _shapes(cfg)
    mel = jax.ShapeDtypeStruct((2, 64, 256, 1), jnp.float32)
    model = AutoencoderKL(cfg)
    mean, logvar = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=model.encode), params, mel)
    assert mean.shape == logvar.shape == (2, 8, 32, 16)
    out = jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method=model.decode), params, mean)
    assert out.shape == (2, 64, 256, 1) and out.dtype == jnp.float32


# ------------------------------------------------------------------------------------------- numerics


def test_tiny_encode_decode(tiny):
    cfg, model, params, mel = tiny
    mean, logvar = tiny.encode(params, mel)
    assert mean.shape == logvar.shape == (2, 8, 12, cfg.embed_dim)
    eps = jax.random.normal(jax.random.PRNGKey(2), mean.shape)
    z = posterior_sample(mean, logvar, eps)
    np.testing.assert_allclose(z, mean + np.exp(0.5 * np.asarray(logvar)) * eps, rtol=1e-5, atol=1e-6)
    out = tiny.decode(params, z)
    assert out.shape == mel.shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out)) and float(np.std(out)) > 1e-3
    assert jax.eval_shape(model.apply, {"params": params}, mel).shape == mel.shape


def test_logvar_is_clamped(tiny):
    cfg, model, params, mel = tiny
    e = cfg.embed_dim
    for bias, bound in ((1e3, 20.0), (-1e3, -30.0)):
        qbias = np.array(params["quant_conv"]["bias"])
        qbias[e:] = bias  # the logvar half of the moments
        p = dict(params, quant_conv=dict(params["quant_conv"], bias=qbias))
        mean, logvar = tiny.encode(p, mel)
        np.testing.assert_array_equal(logvar, bound)
        assert np.all(np.abs(mean) < 1e3)  # the mean half is untouched


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny):
    cfg, _, params, mel = tiny
    model = AutoencoderKL(cfg, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), mel)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
    mean16, _ = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))(params, mel)
    mean32, _ = tiny.encode(params, mel)
    assert mean16.dtype == jnp.float32
    scale = float(np.max(np.abs(mean32)))
    assert float(np.max(np.abs(mean16 - mean32))) < 0.1 * scale


def test_downsample_pads_bottom_right_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 7, 10, 4)).astype(np.float32)  # odd H on purpose
    mod = Downsample()
    params = mod.init(jax.random.PRNGKey(0), x)["params"]
    y = mod.apply({"params": params}, x)
    # Reference: torch's F.pad(x, (0, 1, 0, 1)) then a stride-2 VALID 3x3 conv, written out in numpy.
    k, b = np.asarray(params["conv"]["kernel"]), np.asarray(params["conv"]["bias"])
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    ho, wo = (xp.shape[1] - 3) // 2 + 1, (xp.shape[2] - 3) // 2 + 1
    ref = np.zeros((1, ho, wo, 4), np.float32) + b
    for i in range(3):
        for j in range(3):
            ref += xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2] @ k[i, j]
    assert y.shape == ref.shape == (1, 3, 5, 4)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_upsample_is_nearest_then_conv():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    mod = Upsample()
    mod.init(jax.random.PRNGKey(0), x)
    k = np.zeros((3, 3, 4, 4), np.float32)
    k[1, 1] = np.eye(4)  # identity conv exposes the interpolation
    y = mod.apply({"params": {"conv": {"kernel": k, "bias": np.zeros(4, np.float32)}}}, x)
    np.testing.assert_array_equal(y, x.repeat(2, axis=1).repeat(2, axis=2))


def test_attention_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 32)).astype(np.float32)
    mod = AttnBlock()
    params = mod.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree_util.tree_map(lambda a: a + 0.05 * rng.standard_normal(a.shape).astype(np.float32), params)
    y = mod.apply({"params": params}, x)

    def conv1x1(h, name):
        return h @ np.asarray(params[name]["kernel"])[0, 0] + np.asarray(params[name]["bias"])

    g = x.reshape(2, 15, 32, 1)  # 32 groups of one channel over the 15 positions
    h = (g - g.mean(1, keepdims=True)) / np.sqrt(g.var(1, keepdims=True) + 1e-6)
    h = h.reshape(2, 15, 32) * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
    q, k, v = (conv1x1(h, n) for n in "qkv")
    w = np.einsum("bic,bjc->bij", q, k) / np.sqrt(32)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ref = x + conv1x1(w @ v, "proj_out").reshape(x.shape)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ conversion


def test_rules_cover_the_reference_key_count():
    # 252 VAE keys per prefix in the released checkpoint (506 with the 254 vocoder keys).
    assert len(expected_keys(cv.rules(VAEConfig()))) == 252
    assert len(set(expected_keys(cv.rules(VAEConfig())))) == 252


@pytest.mark.parametrize("prefix", PREFIXES)
def test_conversion_roundtrip(tiny, prefix):
    cfg, _, params, mel = tiny
    sd = to_torch(cv.rules(cfg), params, prefix=prefix)
    sd[prefix + "vocoder.conv_post.weight"] = np.zeros((1, 2, 7), np.float32)  # not ours: ignored
    src = TensorSource(sd, origin="rt.pth").sub(prefix)
    assert cv.infer_config(src) == cfg
    target = jax.eval_shape(AutoencoderKL(cfg).init, jax.random.PRNGKey(0), mel)["params"]
    back = to_flax(cv.rules(cfg), src, target)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.tree_util.tree_map(np.asarray, params))
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)


def test_conversion_layouts(tiny):
    cfg, _, params, _ = tiny
    sd = to_torch(cv.rules(cfg), params)
    k = np.asarray(params["encoder"]["down_0_block_0"]["conv1"]["kernel"])  # [kh, kw, in, out]
    assert sd["encoder.down.0.block.0.conv1.weight"].shape == (k.shape[3], k.shape[2], 3, 3)
    np.testing.assert_array_equal(sd["encoder.down.0.block.0.conv1.weight"][5, 7, 0, 2], k[0, 2, 7, 5])
    np.testing.assert_array_equal(sd["decoder.mid.attn_1.norm.weight"], params["decoder"]["mid_attn_1"]["norm"]["scale"])
    # A 1×1 shortcut exactly where the width changes (tiny: 32 → 64 encoding, 64 → 32 decoding).
    shortcuts = sorted(k for k in sd if "nin_shortcut.weight" in k)
    assert shortcuts == ["decoder.up.0.block.0.nin_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight"]


@pytest.mark.parametrize("cfg", [VAEConfig(), VAEConfig.reduced(),
                                 VAEConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=3, z_channels=8,
                                           embed_dim=4, in_channels=2, out_ch=3)],
                         ids=["full", "reduced", "odd"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_infer_config_from_shapes(cfg, prefix):
    assert cv.infer_config(_shape_only_source(cfg, prefix)) == cfg


def test_missing_key_is_named(tiny):
    cfg, _, params, mel = tiny
    prefix = PREFIXES[0]
    sd = to_torch(cv.rules(cfg), params, prefix=prefix)
    target = jax.eval_shape(AutoencoderKL(cfg).init, jax.random.PRNGKey(0), mel)["params"]
    key = prefix + "decoder.up.0.block.1.norm2.bias"
    del sd[key]
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        to_flax(cv.rules(cfg), TensorSource(sd, origin="m.pth").sub(prefix), target)
    for key in ("quant_conv.weight", "encoder.conv_in.weight", "decoder.conv_out.weight"):
        with pytest.raises(ConversionError, match=r"m\.pth.*" + (prefix + key).replace(".", r"\.")):
            sd2 = {k: v for k, v in to_torch(cv.rules(cfg), params, prefix=prefix).items() if k != prefix + key}
            cv.infer_config(TensorSource(sd2, origin="m.pth").sub(prefix))


def test_wrong_shape_is_named(tiny):
    cfg, _, params, mel = tiny
    prefix = PREFIXES[1]
    target = jax.eval_shape(AutoencoderKL(cfg).init, jax.random.PRNGKey(0), mel)["params"]
    sd = to_torch(cv.rules(cfg), params, prefix=prefix)
    key = prefix + "encoder.mid.attn_1.q.weight"
    sd[key] = np.zeros((64, 32, 1, 1), np.float32)
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        to_flax(cv.rules(cfg), TensorSource(sd, origin="m.pth").sub(prefix), target)
    # Shape errors infer_config itself can see.
    for key, shape in (("encoder.conv_out.weight", (9, 64, 3, 3)),
                       ("quant_conv.weight", (8, 4, 1, 1)),
                       ("post_quant_conv.weight", (4, 4, 3, 3)),
                       ("encoder.down.1.block.0.conv1.weight", (48, 32, 3, 3))):
        sd2 = dict(to_torch(cv.rules(cfg), params, prefix=prefix))
        sd2[prefix + key] = np.zeros(shape, np.float32)
        with pytest.raises(ConversionError, match=(prefix + key).replace(".", r"\.")):
            cv.infer_config(TensorSource(sd2, origin="m.pth").sub(prefix))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_infer_config_encoder_only(tiny, prefix):
    # A conditioning VAE stored without decoder / post_quant_conv still gives its (encoder) architecture.
    cfg, _, params, _ = tiny
    sd = {k: v for k, v in to_torch(cv.rules(cfg), params, prefix=prefix).items()
          if k.startswith(prefix + "encoder.") or k.startswith(prefix + "quant_conv.")}
    assert cv.infer_config(TensorSource(sd).sub(prefix)) == cfg
    # ...but a partial decoder is an error naming what is missing.
    sd[prefix + "decoder.conv_in.weight"] = np.zeros((64, 4, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"post_quant_conv\.weight"):
        cv.infer_config(TensorSource(sd).sub(prefix))


def test_decoder_deeper_than_encoder_is_rejected():
    cfg = VAEConfig.tiny()
    prefix = PREFIXES[0]
    extra = {prefix + "decoder.up.1.block.2.conv1.weight": jax.ShapeDtypeStruct((64, 64, 3, 3), jnp.float32)}
    with pytest.raises(ConversionError, match=r"decoder\.up\.1\.block\.2"):
        cv.infer_config(_shape_only_source(cfg, prefix, extra))
