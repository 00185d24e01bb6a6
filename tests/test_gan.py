"""Discriminators and GAN / VAE / vocoder training losses (audiosr_jax.training.discriminators, .losses)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from audiosr_jax.training import losses as L
from audiosr_jax.training.discriminators import (
    MRD_RESOLUTIONS,
    MultiPeriodDiscriminator,
    MultiResolutionDiscriminator,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    VocoderDiscriminator,
    WNConv,
    count_params,
    linear_spectrogram,
)

T = 4800
KEY = jax.random.key(0, impl="unsafe_rbg")  # compiles much faster than threefry on CPU


def _wave(b=2, t=T, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, t)).astype(np.float32) * 0.3)


def _mel(seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((2, 64, 64, 1)).astype(np.float32))


def _ceil_chain(n, strides):
    for s in strides:
        n = -(-n // s)
    return n


TINY_PARTS = {"mpd": MultiPeriodDiscriminator.tiny, "msd": MultiScaleDiscriminator.tiny,
              "mrd": MultiResolutionDiscriminator.tiny}


@pytest.fixture(scope="module")
def tiny_models():
    """name -> (module, param shapes, input). Shapes only (jax.eval_shape: nothing compiled); the standalone
    tiny MPD / MSD / MRD have exactly the param trees of the tiny vocoder's "mpd" / "msd" / "mrd" subtrees."""
    voc, x = VocoderDiscriminator.tiny(), _wave()
    vparams = jax.eval_shape(voc.init, KEY, x)
    out = {"vocoder": (voc, vparams, x)}
    for name, make in TINY_PARTS.items():
        assert jax.tree_util.tree_structure(jax.eval_shape(make().init, KEY, x)["params"]) == (
            jax.tree_util.tree_structure(vparams["params"][name]))
        out[name] = (make(), {"params": vparams["params"][name]}, x)
    patch, mel = PatchDiscriminator.tiny(), _mel()
    out["patch"] = (patch, jax.eval_shape(patch.init, KEY, mel), mel)
    return out


@pytest.fixture(scope="module")
def small_models():
    """Initialised (real values) small models for the numeric tests: a vocoder discriminator with one period,
    one scale and one resolution covers MPD, MSD and MRD cheaply (the avg-pool has its own test)."""
    voc, x = VocoderDiscriminator.tiny(periods=(3,), scales=1, resolutions=(MRD_RESOLUTIONS[2],)), _wave()
    patch, mel = PatchDiscriminator.tiny(), _mel()
    return {"vocoder": (voc, jax.jit(voc.init)(KEY, x), x), "patch": (patch, jax.jit(patch.init)(KEY, mel), mel)}


def _apply(d, params, x):
    return jax.eval_shape(d.apply, params, x)


# ------------------------------------------------------------------------------------------------------------
# Discriminators
# ------------------------------------------------------------------------------------------------------------


def test_mpd_shapes_and_logit_counts(tiny_models):
    d, params, x = tiny_models["mpd"]
    logits, feats = _apply(d, params, x)
    assert len(logits) == len(feats) == 5
    for p, lg, ft in zip(d.periods, logits, feats):
        rows = -(-T // p)  # reflect-padded up to a multiple of the period
        expect = _ceil_chain(rows, (3, 3, 3, 3)) * p  # 4 stride-3 convs, "same"-padded k5
        assert lg.shape == (2, expect) and lg.dtype == jnp.float32
        assert len(ft) == 6  # 5 convs + conv_post
        assert ft[0].shape == (2, _ceil_chain(rows, (3,)), p, 2)
        assert ft[-1].shape == (2, expect // p, p, 1)


def test_msd_shapes(tiny_models):
    d, params, x = tiny_models["msd"]
    logits, feats = _apply(d, params, x)
    n = T
    for i, (lg, ft) in enumerate(zip(logits, feats)):
        if i:
            n = n // 2 + 1  # AvgPool1d(4, 2, padding=2)
        assert lg.shape == (2, _ceil_chain(n, (2, 2, 4, 4)))
        assert len(ft) == 8


def test_msd_avg_pool_matches_torch_formula():
    from audiosr_jax.training.discriminators import _avg_pool_4_2

    x = np.random.default_rng(1).standard_normal((2, 37)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (2, 2)))
    n_out = (37 + 4 - 4) // 2 + 1
    ref = np.stack([xp[:, 2 * i : 2 * i + 4].sum(-1) / 4 for i in range(n_out)], -1)
    np.testing.assert_allclose(np.asarray(_avg_pool_4_2(jnp.asarray(x))), ref, rtol=1e-6, atol=1e-6)


def test_mrd_shapes(tiny_models):
    d, params, x = tiny_models["mrd"]
    logits, feats = _apply(d, params, x)
    for (n_fft, hop, _), lg, ft in zip(MRD_RESOLUTIONS, logits, feats):
        frames = T // hop
        assert ft[0].shape == (2, frames, n_fft // 2 + 1, 2)
        assert lg.shape == (2, _ceil_chain(frames, (2, 2, 2)) * (n_fft // 2 + 1))


def test_linear_spectrogram_matches_numpy():
    n_fft, hop, win = 512, 50, 240
    x = np.random.default_rng(2).standard_normal((2, 1000)).astype(np.float32)
    pad = (n_fft - hop) // 2
    xp = np.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    w = np.zeros(n_fft)
    off = (n_fft - win) // 2
    w[off : off + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    n_frames = (xp.shape[-1] - n_fft) // hop + 1
    frames = np.stack([xp[:, t * hop : t * hop + n_fft] for t in range(n_frames)], 1)
    ref = np.abs(np.fft.rfft(frames * w, axis=-1))
    got = np.asarray(linear_spectrogram(jnp.asarray(x), n_fft, hop, win))
    assert got.shape == (2, 1000 // hop, n_fft // 2 + 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_vocoder_discriminator_kinds(tiny_models):
    d, params, x = tiny_models["vocoder"]
    logits, feats = _apply(d, params, x)
    assert len(logits) == len(feats) == len(d.sub_names()) == 11
    assert set(params["params"]) == {"mpd", "msd", "mrd"}
    only = VocoderDiscriminator.tiny(kinds=("mrd",))
    p = jax.eval_shape(only.init, KEY, x)
    assert set(p["params"]) == {"mrd"}
    lg, _ = jax.eval_shape(only.apply, p, x)
    assert len(lg) == 3 and only.sub_names() == ["mrd_1024", "mrd_2048", "mrd_512"]
    with pytest.raises(ValueError, match="unknown discriminator kind"):
        jax.eval_shape(VocoderDiscriminator(kinds=("xyz",)).init, KEY, x)


def test_patch_shapes_and_stateless(tiny_models):
    d, params, x = tiny_models["patch"]
    assert set(params) == {"params"}  # GroupNorm, not BatchNorm: no batch_stats collection
    logits, feats = _apply(d, params, x)
    # 64 → 32 → 16 → 8 (stride-2 k4 p1), then two stride-1 k4 p1 convs: 8 → 7 → 6
    assert logits.shape == (2, 6, 6, 1) and logits.dtype == jnp.float32
    assert [f.shape[-1] for f in feats] == [8, 16, 32, 64]


def test_all_params_float32_and_bf16_compute(tiny_models, small_models):
    for name, (d, params, x) in tiny_models.items():
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params)), name
    d, params, x = small_models["patch"]
    lg, ft = jax.jit(d.clone(dtype=jnp.bfloat16).apply)(params, x)
    assert lg.dtype == jnp.float32 and ft[0].dtype == jnp.bfloat16
    ref, _ = jax.jit(d.apply)(params, x)
    np.testing.assert_allclose(np.asarray(lg), np.asarray(ref), atol=0.05, rtol=0.1)
    conv = WNConv(8, (5,), padding=((2, 2),))
    xw = _wave(2, 64)[..., None]
    p = conv.init(KEY, xw)
    y16 = jax.jit(conv.clone(dtype=jnp.bfloat16).apply)(p, xw)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(conv.apply(p, xw)), atol=0.05, rtol=0.05)


def test_weight_norm_semantics():
    conv = WNConv(6, (3,), padding=((1, 1),))
    x = _wave(2, 16)[..., None]
    p = conv.init(KEY, x)["params"]
    v = np.asarray(p["kernel"])
    np.testing.assert_allclose(np.asarray(p["scale"]), np.sqrt((v**2).sum(axis=(0, 1))), rtol=1e-6)
    plain = WNConv(6, (3,), padding=((1, 1),), weight_norm=False)
    y_plain = plain.apply({"params": {"kernel": p["kernel"], "bias": p["bias"]}}, x)
    np.testing.assert_allclose(conv.apply({"params": p}, x), y_plain, rtol=1e-5, atol=1e-6)
    # the direction is all that v carries: scaling it leaves the output unchanged
    p2 = dict(p, kernel=p["kernel"] * 3.0)
    np.testing.assert_allclose(conv.apply({"params": p2}, x), y_plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vocoder", "patch"])
def test_jit_grad_finite(small_models, name):
    d, params, x = small_models[name]

    @jax.jit
    def g(params, x):
        def f(params, x):
            logits, feats = d.apply(params, x)
            return L.lsgan_generator_loss(L._as_list(logits)) + sum(jnp.mean(jnp.abs(a)) for a in feats[-1])

        return jax.grad(f, argnums=(0, 1))(params, x)

    gp, gx = g(params, x)
    leaves = jax.tree_util.tree_leaves(gp)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    assert any(float(jnp.abs(a).max()) > 0 for a in leaves)
    assert bool(jnp.all(jnp.isfinite(gx))) and float(jnp.abs(gx).max()) > 0


FULL_COUNTS = {
    "mpd": (MultiPeriodDiscriminator, 41_105_770),
    "msd": (MultiScaleDiscriminator, 29_622_918),
    "mrd": (MultiResolutionDiscriminator, 280_902),
    "vocoder": (VocoderDiscriminator, 71_009_590),
    "patch": (PatchDiscriminator, 2_763_585),
}


@pytest.mark.parametrize("name", list(FULL_COUNTS))
def test_full_width_param_counts(name):
    cls, expect = FULL_COUNTS[name]
    x = _mel() if name == "patch" else _wave()
    shapes = jax.eval_shape(cls().init, KEY, x)
    n = count_params(shapes)
    print(f"{cls.__name__} full-width params: {n:,}")
    assert n == expect


def test_tiny_mpd_learns_real_vs_noise():
    """A few Adam steps of the LSGAN d-loss on sines (real) vs white noise (fake) drive the loss down."""
    d = MultiPeriodDiscriminator(periods=(2, 3), channels=(4, 8, 8, 8, 8))
    t = np.arange(1200) / 48000
    rng = np.random.default_rng(3)
    real = jnp.asarray(np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 2000, 4)]), jnp.float32)
    fake = jnp.asarray(rng.standard_normal((4, 1200)) * 0.35, jnp.float32)
    params = jax.jit(d.init)(KEY, real)
    opt = optax.adam(5e-3, b1=0.8, b2=0.99)
    state = opt.init(params)

    @jax.jit
    def loss_fn(p):
        return L.lsgan_discriminator_loss(d.apply(p, real)[0], d.apply(p, fake)[0])[0]

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    first = float(loss_fn(params))
    for _ in range(50):
        params, state, loss = step(params, state)
    last = float(loss_fn(params))
    assert last < 0.2 * first, (first, last)
    score = jax.jit(lambda p, x: jnp.mean(jnp.concatenate(d.apply(p, x)[0], axis=1)))
    real_score, fake_score = float(score(params, real)), float(score(params, fake))
    assert real_score > fake_score + 0.5, (real_score, fake_score)  # LSGAN targets: real 1, fake 0


# ------------------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(7)
R1, R2 = RNG.standard_normal((2, 5)).astype(np.float32), RNG.standard_normal((2, 3, 4)).astype(np.float32)
F1, F2 = RNG.standard_normal((2, 5)).astype(np.float32), RNG.standard_normal((2, 3, 4)).astype(np.float32)


def test_lsgan_matches_numpy():
    total, per = L.lsgan_discriminator_loss([R1, R2], [F1, F2])
    ref = [np.mean((1 - r) ** 2) + np.mean(f**2) for r, f in ((R1, F1), (R2, F2))]
    np.testing.assert_allclose([float(p) for p in per], ref, rtol=1e-6)
    np.testing.assert_allclose(float(total), sum(ref), rtol=1e-6)
    g = L.lsgan_generator_loss([F1, F2])
    np.testing.assert_allclose(float(g), np.mean((1 - F1) ** 2) + np.mean((1 - F2) ** 2), rtol=1e-6)


def test_lsgan_perfect_logits_zero():
    real, fake = [jnp.ones((2, 5)), jnp.ones((2, 7))], [jnp.zeros((2, 5)), jnp.zeros((2, 7))]
    total, per = L.lsgan_discriminator_loss(real, fake)
    assert float(total) == 0.0 and all(float(p) == 0.0 for p in per)
    assert float(L.lsgan_generator_loss([jnp.ones((2, 5))])) == 0.0


def test_hinge_matches_numpy():
    d = L.hinge_discriminator_loss(R2, F2)
    ref = 0.5 * (np.mean(np.maximum(0, 1 - R2)) + np.mean(np.maximum(0, 1 + F2)))
    np.testing.assert_allclose(float(d), ref, rtol=1e-6)
    np.testing.assert_allclose(float(L.hinge_generator_loss(F2)), -np.mean(F2), rtol=1e-6)
    assert float(L.hinge_discriminator_loss(jnp.full((2, 3), 2.0), jnp.full((2, 3), -1.5))) == 0.0


def test_feature_matching():
    real = [[jnp.asarray(R1), jnp.asarray(R2)], [jnp.asarray(R2)]]
    fake = [[jnp.asarray(F1), jnp.asarray(F2)], [jnp.asarray(F2)]]
    ref = np.mean(np.abs(R1 - F1)) + 2 * np.mean(np.abs(R2 - F2))
    np.testing.assert_allclose(float(L.feature_matching_loss(real, fake)), ref, rtol=1e-6)
    assert float(L.feature_matching_loss(real, real)) == 0.0
    g_real, g_fake = jax.grad(L.feature_matching_loss, argnums=(0, 1))(real, fake)
    assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree_util.tree_leaves(g_real))
    assert all(float(jnp.abs(a).max()) > 0.0 for a in jax.tree_util.tree_leaves(g_fake))


def test_kl_diagonal_gaussian():
    assert float(L.kl_diagonal_gaussian(jnp.zeros((3, 4, 4, 2)), jnp.zeros((3, 4, 4, 2)))) == 0.0
    m, lv = R2, F2 * 0.5
    ref = 0.5 * np.sum(m**2 + np.exp(lv) - 1 - lv) / 2
    np.testing.assert_allclose(float(L.kl_diagonal_gaussian(m, lv)), ref, rtol=1e-6)
    # closed form per element for N(mu, s²) vs N(0, 1): log(1/s) + (s² + mu²)/2 - 1/2
    mu, s = 0.7, 1.3
    closed = math.log(1 / s) + (s**2 + mu**2) / 2 - 0.5
    got = L.kl_diagonal_gaussian(jnp.full((1, 1), mu), jnp.full((1, 1), 2 * math.log(s)))
    np.testing.assert_allclose(float(got), closed, rtol=1e-5)


def test_vae_reconstruction_nll():
    x_hat, x = R2, F2
    for s in (0.0, 0.4):
        ref = np.sum(np.abs(x - x_hat) / np.exp(s) + s) / 2
        np.testing.assert_allclose(float(L.vae_reconstruction_nll(x_hat, x, s)), ref, rtol=1e-6)
    # perceptual hook: a per-example value added to every element
    hook = lambda a, b: jnp.array([1.0, 2.0])  # noqa: E731
    got = L.vae_reconstruction_nll(x_hat, x, 0.0, perceptual_loss=hook, perceptual_weight=0.5)
    ref = (np.sum(np.abs(x - x_hat)) + 0.5 * 12 * (1.0 + 2.0)) / 2
    np.testing.assert_allclose(float(got), ref, rtol=1e-6)
    gs = jax.grad(L.vae_reconstruction_nll, argnums=2)(x_hat, x, 0.0)
    np.testing.assert_allclose(float(gs), (-np.sum(np.abs(x - x_hat)) + x.size) / 2, rtol=1e-5)


def test_mel_l1_loss():
    w = _wave(2, 4800, seed=4)
    f = jax.jit(jax.value_and_grad(L.mel_l1_loss))
    assert float(f(w, w)[0]) == 0.0
    w2 = w + 0.05 * _wave(2, 4800, seed=5)
    val, g = f(w2, w)
    assert float(val) > 0.0 and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_adaptive_gan_weight():
    nll = {"k": jnp.asarray(R2)}
    g = {"k": jnp.asarray(F2)}
    ref = np.linalg.norm(R2) / (np.linalg.norm(F2) + 1e-4) * 0.5
    np.testing.assert_allclose(float(L.adaptive_gan_weight(nll, g)), ref, rtol=1e-5)
    zero_g = {"k": jnp.zeros_like(g["k"])}
    np.testing.assert_allclose(float(L.adaptive_gan_weight(nll, zero_g, max_weight=10.0)), 5.0, rtol=1e-6)
    # stop_gradient: no gradient into either pytree
    gr = jax.grad(lambda a: L.adaptive_gan_weight({"k": a}, g))(jnp.asarray(R2))
    assert float(jnp.abs(gr).max()) == 0.0


def test_disc_factor():
    assert float(L.disc_factor(0, 50001)) == 0.0
    assert float(L.disc_factor(50000, 50001)) == 0.0
    assert float(L.disc_factor(50001, 50001)) == 1.0
    assert float(jax.jit(L.disc_factor, static_argnums=1)(jnp.int32(60000), 50001)) == 1.0


def _grouped_conv_grad_error(mesh_axes, batch=8):
    """Max relative error, vs one device, of a grouped conv's param gradients on ``mesh_axes`` as the training
    step computes them: batch over data+fsdp, params by the default rules (kernel in-dim on fsdp, out-dim on
    tensor), traced under ``grouped_convs_batch_sharded`` as ``loop.jit_train_step`` does."""
    from jax.sharding import NamedSharding

    from audiosr_jax import sharding as sh

    rules = (("batch", ("data", "fsdp")), ("conv_in", "fsdp"), ("conv_out", "tensor"), ("channels", None))
    conv = WNConv(16, (41,), (4,), ((20, 20),), groups=4)
    x = jnp.asarray(np.random.default_rng(8).standard_normal((batch, 64, 8)).astype(np.float32))
    p = jax.jit(conv.init)(KEY, x)
    loss = lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x)))
    g0 = jax.jit(jax.grad(loss))(p, x)
    mesh = sh.make_mesh(mesh_axes)

    def pinned_loss(p, x):
        with sh.grouped_convs_batch_sharded(mesh):
            return loss(p, x)

    specs = sh.param_specs(p, rules, mesh)
    ps = jax.device_put(p, sh.named(mesh, specs))
    g1 = jax.jit(jax.grad(pinned_loss))(ps, jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp")))))
    err = max(float(jnp.abs(a - b).max() / jnp.abs(a).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
    return err, specs["params"]["kernel"]


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")
def test_grouped_conv_grad_under_fsdp_sharding():
    """Batch over data+fsdp, conv kernels' input dim FSDP-sharded (the default rules): exact gradients."""
    err, spec = _grouped_conv_grad_error((("data", 4), ("fsdp", 2), ("tensor", 1)))
    assert spec == P(None, "fsdp", None) and err < 1e-5


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("mesh,batch", [((("data", 4), ("fsdp", 1), ("tensor", 2)), 8),
                                        ((("data", 2), ("fsdp", 2), ("tensor", 2)), 8),
                                        ((("data", 2), ("fsdp", 2), ("tensor", 2)), 4)],
                         ids=["data4-tensor2", "data2-fsdp2-tensor2", "batch4-runs-replicated"])
def test_grouped_conv_grad_under_tensor_sharding(mesh, batch):
    """tensor = 2, kernel out-dim tensor-sharded, batch replicated over tensor: exact gradients. (Without the
    pinning XLA's kernel gradient comes out tensor-times too large, whatever the kernel's sharding.) A batch
    that does not divide over all 8 devices runs the grouped conv replicated."""
    err, spec = _grouped_conv_grad_error(mesh, batch)
    assert "tensor" in tuple(spec) and err < 1e-5
