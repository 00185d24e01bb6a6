"""The shared conv and dense layers: both conv forms against a direct float64 correlation, flax's layers'
params and results in float32, and the bf16 program XLA CPU gets (no convolution, float32-accumulating dots)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.models.blocks import Conv1D, Conv2D, Dense, conv_form, conv2d, dense


def _correlate(x, w, b, stride, padding):
    """Direct float64 cross-correlation, NHWC × HWIO, explicit padding:
    out[n, i, j] = Σ x[n, s·i + a, s·j + c] w[a, c]."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), *padding, (0, 0)))
    w = np.asarray(w, np.float64)
    k = w.shape[0]
    ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, stride * i:stride * i + k, stride * j:stride * j + k, :]
            out[:, i, j] = np.einsum("nabc,abco->no", patch, w)
    return out + np.asarray(b, np.float64)


def _init(module, x):
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    # a non-zero bias, so that a form that dropped it would fail
    return {"params": dict(params, bias=jax.random.normal(jax.random.PRNGKey(1), params["bias"].shape))}


CASES = [(3, 1, ((1, 1), (1, 1))), (1, 1, ((0, 0), (0, 0))), (3, 2, ((0, 1), (0, 1))), (3, 1, ((0, 2), (1, 0)))]


@pytest.mark.parametrize("kernel,stride,padding", CASES)
@pytest.mark.parametrize("form", ["xla", "taps"])
def test_conv_forms_equal_a_direct_correlation(kernel, stride, padding, form):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 6, 5))
    conv = Conv2D(4, kernel, stride, padding, form=form)
    params = _init(Conv2D(4, kernel, stride, padding, form="xla"), x)
    if form == "taps" and stride != 1:
        with pytest.raises(ValueError, match="needs stride 1"):
            conv.apply(params, x)
        return
    got = conv.apply(params, x)
    want = _correlate(x, params["params"]["kernel"], params["params"]["bias"], stride, padding)
    assert got.dtype == jnp.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    got16 = Conv2D(4, kernel, stride, padding, dtype=jnp.bfloat16, form=form).apply(params, x)
    assert got16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got16, np.float32), want, rtol=3e-2, atol=3e-2 * np.abs(want).max())


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (7, 3), (11, 5), (1, 1)])
@pytest.mark.parametrize("form", ["xla", "taps"])
def test_conv1d_forms_equal_a_direct_correlation(kernel, dilation, form):
    """The vocoder's dilated 'same' convs: out[n, t] = Σ_i x[n, t + d·i - pad] w[i]."""
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 40, 6))
    pad = dilation * (kernel - 1) // 2
    params = _init(Conv1D(5, kernel, dilation, (pad, pad), form="xla"), x)
    w, b = (np.asarray(params["params"][n], np.float64) for n in ("kernel", "bias"))
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pad, pad), (0, 0)))
    want = sum(np.einsum("ntc,co->nto", xp[:, dilation * i:dilation * i + 40], w[i]) for i in range(kernel)) + b
    got = Conv1D(5, kernel, dilation, (pad, pad), form=form).apply(params, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    got16 = Conv1D(5, kernel, dilation, (pad, pad), dtype=jnp.bfloat16, form=form).apply(params, x)
    assert got16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got16, np.float32), want, rtol=3e-2, atol=3e-2 * np.abs(want).max())
    out32 = Conv1D(5, kernel, dilation, (pad, pad), dtype=jnp.bfloat16, float32_out=True, form=form).apply(params, x)
    assert out32.dtype == jnp.float32  # the last layer's sums are not rounded to bf16
    assert np.abs(np.asarray(out32) - want).max() < np.abs(np.asarray(got16, np.float32) - want).max()


def test_conv_and_dense_are_flax_layers_in_float32():
    """Same param tree (a checkpoint written with nn.Conv / nn.Dense loads) and the same result."""
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 8, 5, 6))
    ours, theirs = conv2d(7, 3, jnp.float32, None), nn.Conv(7, (3, 3), padding=((1, 1), (1, 1)))
    params = _init(theirs, x)
    assert jax.tree.map(jnp.shape, _init(ours, x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-6, atol=1e-6)
    x1 = x[:, 0]  # [1, 5, 6]: a 1-D conv with dilation, as the vocoder's
    ours, theirs = Conv1D(4, 3, 2, (2, 2)), nn.Conv(4, (3,), kernel_dilation=(2,), padding=((2, 2),))
    params = _init(theirs, x1)
    assert jax.tree.map(jnp.shape, _init(ours, x1)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(ours.apply(params, x1), theirs.apply(params, x1), rtol=1e-6, atol=1e-6)
    ours, theirs = dense(9, jnp.float32, None), nn.Dense(9)
    params = _init(theirs, x)
    assert jax.tree.map(jnp.shape, _init(ours, x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-6, atol=1e-6)
    no_bias = Dense(9, use_bias=False)
    assert set(no_bias.init(jax.random.PRNGKey(0), x)["params"]) == {"kernel"}


def test_auto_form_is_taps_only_for_stride_one_bf16_on_the_cpu():
    assert conv_form(jnp.bfloat16, 1, "cpu") == "taps"
    assert conv_form(jnp.float32, 1, "cpu") == "xla"
    assert conv_form(jnp.bfloat16, 2, "cpu") == "xla"
    assert conv_form(jnp.bfloat16, 1, "gpu") == "xla" and conv_form(jnp.bfloat16, 1, "tpu") == "xla"
    with pytest.raises(ValueError, match="form must be one of"):
        Conv2D(2, 3, form="winograd").init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))


def _compiled_dots(module, x) -> tuple[str, list[tuple[str, list[str]]]]:
    """The bf16 program XLA compiles for `module` and its dots as (result type, operand types)."""
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _init(module, x))
    hlo = jax.jit(module.apply).lower(params, x.astype(jnp.bfloat16)).compile().as_text()
    types, dots = {}, []
    for line in hlo.splitlines():  # an operand's type is that of the latest instruction of its name
        m = re.match(r"\s*(?:ROOT )?(%[\w.-]+) = (\w+)\[", line)
        if not m:
            continue
        types[m.group(1)] = m.group(2)
        if " dot(" in line:
            operands = re.findall(r"%[\w.-]+", line.split(" dot(")[1].split(")")[0])
            dots.append((m.group(2), [types.get(o) for o in operands]))
    return hlo, dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU program")
def test_bf16_layers_on_the_cpu_compile_to_float32_accumulating_dots():
    """What puts them on the bf16 matrix units of a CPU (blocks.py): XLA CPU runs a bf16 → f32 dot there, but
    converts a bf16 → bf16 dot to f32 and runs no convolution on them."""
    x = jax.random.normal(jax.random.PRNGKey(4), (1, 16, 8, 32))
    hlo, dots = _compiled_dots(Conv2D(32, 3, padding=((1, 1), (1, 1)), dtype=jnp.bfloat16), x)
    assert "convolution(" not in hlo
    assert dots == [("f32", ["bf16", "bf16"])] * 9
    hlo, dots = _compiled_dots(Conv1D(32, 3, 3, (3, 3), dtype=jnp.bfloat16), x[:, 0])
    assert "convolution(" not in hlo and dots == [("f32", ["bf16", "bf16"])] * 3
    _, dots = _compiled_dots(Dense(16, dtype=jnp.bfloat16), x)
    assert dots == [("f32", ["bf16", "bf16"])]
