"""The 48 kHz HiFi-GAN vocoder: sizes, conv arithmetic, torch layer equivalence, conversion."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audiosr_jax.convert import vocoder as conv
from audiosr_jax.convert.rules import ConversionError, Rule, TensorSource, to_flax, to_torch
from audiosr_jax.models.vocoder import HiFiGAN, VocoderConfig, upsample_conv
from audiosr_jax.lab.synthetic import synthetic_state_dict

FULL = VocoderConfig()


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _torch_shapes(cfg: VocoderConfig) -> dict[str, tuple[int, ...]]:
    """The reference Generator's state-dict shapes, written out from its constructor (weight norm removed)."""
    c0, out = cfg.upsample_initial_channel, {}
    out["conv_pre.weight"], out["conv_pre.bias"] = (c0, cfg.num_mels, 7), (c0,)
    for i, k in enumerate(cfg.upsample_kernel_sizes):
        out[f"ups.{i}.weight"], out[f"ups.{i}.bias"] = (c0 >> i, c0 >> (i + 1), k), (c0 >> (i + 1),)
    r = 0
    for i in range(len(cfg.upsample_rates)):
        ch = c0 >> (i + 1)
        for k, ds in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
            for j in range(len(ds)):
                for c in ("convs1", "convs2"):
                    out[f"resblocks.{r}.{c}.{j}.weight"], out[f"resblocks.{r}.{c}.{j}.bias"] = (ch, ch, k), (ch,)
            r += 1
    out["conv_post.weight"], out["conv_post.bias"] = (1, c0 >> len(cfg.upsample_rates), 7), (1,)
    return out


class _Shape:
    """Stands in for a tensor when only its shape is read (full-size configs without allocating)."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def _shape_source(cfg, drop=(), replace=None) -> TensorSource:
    shapes = {**_torch_shapes(cfg), **(replace or {})}
    return TensorSource({conv.PREFIX + k: _Shape(v) for k, v in shapes.items() if k not in drop},
                        origin="ckpt.bin").sub(conv.PREFIX)


def _synthetic(cfg: VocoderConfig, seed: int = 0) -> tuple[dict, dict]:
    """(torch state dict with the `PREFIX`, converted Flax params) from `audiosr_jax.lab.synthetic` weights.
    (Cheaper than `HiFiGAN.init`, which compiles a random initialiser per distinct param shape.)"""
    sd = synthetic_state_dict({conv.PREFIX + k: v for k, v in _torch_shapes(cfg).items()}, seed=seed)
    got_cfg, params = conv.convert(TensorSource(sd, origin="synthetic").sub(conv.PREFIX))
    assert got_cfg == cfg
    return sd, params


# ---------------------------------------------------------------- sizes

def test_full_size_param_count_and_breakdown():
    params = conv.param_shapes(FULL)
    assert _count(params) == 190_281_889  # docs/design.md §Parameter counts
    assert _count(params["conv_pre"]) == 2_754_048
    assert [_count(params[f"ups_{i}"]) for i in range(5)] == [14_156_544, 2_949_504, 590_016, 73_824, 18_480]
    per_level = [sum(_count(params[f"resblocks_{4 * i + j}"]) for j in range(4)) for i in range(5)]
    assert per_level == [127_420_416, 31_859_712, 7_967_232, 1_992_960, 498_816]
    # ... which rounds to the spec's table: ups 14.16/2.95/0.59/0.07/0.02 M, resblocks 127.4/31.9/8.0/2.0/0.5 M
    assert [round(_count(params[f"ups_{i}"]) / 1e6, 2) for i in range(5)] == [14.16, 2.95, 0.59, 0.07, 0.02]
    assert [round(n / 1e6, 1) for n in per_level] == [127.4, 31.9, 8.0, 2.0, 0.5]
    assert _count(params["conv_post"]) == 337
    # Every param is float32 and every torch tensor has its Flax counterpart.
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert len(jax.tree.leaves(params)) == len(_torch_shapes(FULL)) == 254


def test_reduced_and_tiny_param_counts():
    assert _count(conv.param_shapes(VocoderConfig.reduced())) == 441_821  # "0.44 M" in docs/design.md §Reduced width
    assert _count(conv.param_shapes(VocoderConfig.tiny())) == 85_967


def test_output_length_full_config():
    assert FULL.hop_length == 480
    assert FULL.output_length(512) == 245_776
    assert all(FULL.output_length(t) == 480 * t + 16 for t in (1, 2, 7, 100, 513))
    mel = jax.ShapeDtypeStruct((2, 512, 256), jnp.float32)
    wav, _ = jax.eval_shape(HiFiGAN(FULL).init_with_output, jax.random.PRNGKey(0), mel)
    assert wav.shape == (2, 245_776) and wav.dtype == jnp.float32
    # The extra samples come only from levels with k-u odd: none here, so exactly hop·T.
    even = VocoderConfig(upsample_rates=(6, 4, 4, 5), upsample_kernel_sizes=(12, 8, 8, 11),
                         upsample_initial_channel=32)
    assert even.output_length(10) == 480 * 10
    reduced = VocoderConfig.reduced()
    assert reduced.output_length(3) == 480 * 3 + 16


# ---------------------------------------------------------------- config

def test_config_dict_round_trip_and_validation():
    for cfg in (FULL, VocoderConfig.reduced(), VocoderConfig.tiny()):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert VocoderConfig.from_dict(d) == cfg
        assert hash(VocoderConfig.from_dict(d)) == hash(cfg)
    assert VocoderConfig.from_dict(FULL.to_dict()).resblock_dilation_sizes == ((1, 3, 5),) * 4
    with pytest.raises(ValueError, match="unknown"):
        VocoderConfig.from_dict({**FULL.to_dict(), "resblock": "1"})
    with pytest.raises(ValueError, match="divisible"):
        VocoderConfig(upsample_initial_channel=48)
    with pytest.raises(ValueError, match="odd"):
        VocoderConfig(resblock_kernel_sizes=(3, 4, 11, 15))
    with pytest.raises(ValueError):
        FULL.output_length(0)


# ---------------------------------------------------------------- layers vs torch

@pytest.mark.parametrize("k,u", list(zip(FULL.upsample_kernel_sizes, FULL.upsample_rates)))
def test_upsample_layer_matches_torch_conv_transpose(k, u):
    cin, cout, length = 5, 3, 9
    torch.manual_seed(k * 10 + u)
    ref = torch.nn.ConvTranspose1d(cin, cout, k, u, padding=(k - u) // 2)
    x = torch.randn(2, cin, length)
    with torch.no_grad():
        want = ref(x).numpy()
    sd = {"weight": ref.weight.detach().numpy(), "bias": ref.bias.detach().numpy()}
    layer = upsample_conv(cout, k, u)
    shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), jnp.zeros((1, length, cin)))["params"]
    params = to_flax([Rule("", (), "conv_transpose1d")], TensorSource({"." + n: v for n, v in sd.items()}),
                     None)
    params = {n: params[n] for n in ("kernel", "bias")}
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, dict(shapes))
    got = np.asarray(layer.apply({"params": params}, jnp.asarray(x.numpy().transpose(0, 2, 1))))
    assert got.shape == (2, want.shape[2], cout) == (2, (length - 1) * u - 2 * ((k - u) // 2) + k, cout)
    np.testing.assert_allclose(got.transpose(0, 2, 1), want, rtol=1e-5, atol=1e-6)


def _torch_forward(sd: dict[str, np.ndarray], cfg: VocoderConfig, mel: np.ndarray) -> np.ndarray:
    """The generator written with torch.nn.functional from the reference's forward, on a torch state dict."""
    t = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    x = F.conv1d(torch.from_numpy(np.array(mel)).permute(0, 2, 1), t["conv_pre.weight"], t["conv_pre.bias"], padding=3)
    nk = cfg.num_kernels
    for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        x = F.conv_transpose1d(F.leaky_relu(x, 0.1), t[f"ups.{i}.weight"], t[f"ups.{i}.bias"], stride=u,
                               padding=(k - u) // 2)
        xs = 0
        for j, (rk, ds) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
            y, p = x, f"resblocks.{i * nk + j}"
            for n, d in enumerate(ds):
                h = F.conv1d(F.leaky_relu(y, 0.1), t[f"{p}.convs1.{n}.weight"], t[f"{p}.convs1.{n}.bias"],
                             dilation=d, padding=(rk * d - d) // 2)
                h = F.conv1d(F.leaky_relu(h, 0.1), t[f"{p}.convs2.{n}.weight"], t[f"{p}.convs2.{n}.bias"],
                             padding=(rk - 1) // 2)
                y = y + h
            xs = xs + y
        x = xs / nk
    x = F.conv1d(F.leaky_relu(x), t["conv_post.weight"], t["conv_post.bias"], padding=3)
    return torch.tanh(x).squeeze(1).numpy()


def test_tiny_forward_matches_torch_functional():
    cfg = VocoderConfig.tiny()
    sd, params = _synthetic(cfg, seed=1)
    mel = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, 6, cfg.num_mels)) * 2 - 4, np.float32)
    apply = jax.jit(HiFiGAN(cfg).apply)
    wav = np.asarray(apply({"params": params}, jnp.asarray(mel)))
    assert wav.shape == (2, 480 * 6 + 16) and wav.dtype == np.float32
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0 and wav.std() > 1e-2
    want = _torch_forward({k[len(conv.PREFIX):]: v for k, v in sd.items()}, cfg, mel)
    np.testing.assert_allclose(wav, want, rtol=0, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="mel must be"):
        HiFiGAN(cfg).apply({"params": params}, jnp.zeros((1, 6, 80)))


def test_bfloat16_compute_keeps_float32_params_and_output():
    cfg = VocoderConfig.tiny()
    _, params = _synthetic(cfg, seed=2)
    mel = jax.random.normal(jax.random.PRNGKey(1), (1, 2, cfg.num_mels)) - 4
    wav = jax.jit(HiFiGAN(cfg).apply)({"params": params}, mel)
    bf = jax.jit(HiFiGAN(cfg, dtype=jnp.bfloat16).apply)({"params": params}, mel)
    assert bf.dtype == jnp.float32 and bf.shape == wav.shape == (1, 976)
    assert float(jnp.sqrt(jnp.mean((bf - wav) ** 2))) < 0.05 * float(jnp.sqrt(jnp.mean(wav ** 2)))


# ---------------------------------------------------------------- conversion

def test_rules_names_match_reference_keys():
    for cfg in (FULL, VocoderConfig.tiny()):
        keys = [key for r in conv.rules(cfg) for key, *_ in r.params()]
        assert sorted(keys) == sorted(_torch_shapes(cfg))
    by_torch = {r.torch: r for r in conv.rules(FULL)}
    assert by_torch["conv_pre"].flax == ("conv_pre",)
    assert by_torch["ups.0"] == Rule("ups.0", ("ups_0",), "conv_transpose1d")
    assert by_torch["resblocks.7.convs1.2"].flax == ("resblocks_7", "convs1_2")
    assert by_torch["conv_post"].kind == "conv1d"


def test_conversion_round_trip():
    cfg = VocoderConfig.tiny()
    sd, params = _synthetic(cfg, seed=3)
    back = to_torch(conv.rules(cfg), params, prefix=conv.PREFIX)
    assert set(back) == set(sd)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    # ... and back again to the same Flax tree.
    _, again = conv.convert(TensorSource(back).sub(conv.PREFIX))
    assert jax.tree.structure(again) == jax.tree.structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)))
    # The layout really changes (a transposed, flipped kernel), so the identity is not trivially true.
    assert params["ups_1"]["kernel"].shape == (10, 16, 8) and sd[conv.PREFIX + "ups.1.weight"].shape == (16, 8, 10)
    np.testing.assert_array_equal(params["ups_1"]["kernel"][0], sd[conv.PREFIX + "ups.1.weight"][:, :, -1])


@pytest.mark.parametrize("cfg", [FULL, VocoderConfig.reduced(), VocoderConfig.tiny()], ids=["full", "reduced", "tiny"])
def test_infer_config_recovers_architecture(cfg):
    assert conv.infer_config(_shape_source(cfg)) == cfg


def test_upsample_rate_convention():
    # Rates are not in any shape; the release has k = 2u at every level, so u = k // 2.
    assert tuple(k // 2 for k in FULL.upsample_kernel_sizes) == FULL.upsample_rates


@pytest.mark.parametrize("drop,replace,match", [
    (("conv_pre.weight",), None, "missing key 'first_stage_model.vocoder.conv_pre.weight'"),
    (("ups.0.weight",), None, "ups.0.weight"),
    (("resblocks.3.convs2.1.weight",), None, "resblocks.3.convs2.1.weight"),
    ((), {"ups.2.weight": (384, 96, 8)}, r"ups\.2\.weight has shape \(384, 96, 8\)"),
    ((), {"resblocks.9.convs1.0.weight": (384, 384, 5)}, r"resblocks\.9\.convs1\.0\.weight"),
    ((), {"conv_pre.weight": (1536, 256, 5)}, "kernel size 7"),
    ((), {"conv_post.weight": (1, 96, 7)}, "conv_post.weight"),
    ((), {"ups.1.weight": (768, 384)}, "rank 3"),
    (("conv_pre.weight",), {"conv_pre.weight_g": (1536, 1, 1)}, "weight norm not removed"),
])
def test_infer_config_rejects_inconsistent_shapes(drop, replace, match):
    with pytest.raises(ConversionError, match=match) as e:
        conv.infer_config(_shape_source(FULL, drop, replace))
    assert "ckpt.bin" in str(e.value) and "\n" not in str(e.value)


def test_convert_reports_missing_bias_and_wrong_shape():
    cfg = VocoderConfig.tiny()
    sd = {conv.PREFIX + k: np.zeros(v, np.float32) for k, v in _torch_shapes(cfg).items()}
    del sd[conv.PREFIX + "resblocks.1.convs2.0.bias"]
    with pytest.raises(ConversionError, match="resblocks.1.convs2.0.bias"):
        conv.convert(TensorSource(sd, origin="x.bin").sub(conv.PREFIX))
    sd[conv.PREFIX + "resblocks.1.convs2.0.bias"] = np.zeros((3,), np.float32)  # should be (16,)
    with pytest.raises(ConversionError, match=r"resblocks\.1\.convs2\.0\.bias \(3,\)"):
        conv.convert(TensorSource(sd, origin="x.bin").sub(conv.PREFIX))
