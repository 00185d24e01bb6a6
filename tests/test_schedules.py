"""Noise schedules, parameterisation conversions and the diffusion settings a checkpoint carries."""

import math

import ml_collections
import numpy as np
import pytest

from audiosr_jax.diffusion import objectives
from audiosr_jax.diffusion import parameterization as pz
from audiosr_jax.diffusion import schedules as S
from audiosr_jax.diffusion.config import DiffusionConfig

KWARGS = {"shifted_cosine": {"shift": 0.5}}
ZERO_TERMINAL = {"cosine", "shifted_cosine", "linear_zero_snr", "scaled_linear_zero_snr", "sigmoid"}
POSITIVE_TERMINAL = {"cosine_clipped", "linear", "scaled_linear"}


def table(name, T=1000, **kw):
    return S.make_alphas_cumprod(name, T, **{**KWARGS.get(name, {}), **kw})


def test_every_registered_schedule_is_classified():
    assert set(S.SCHEDULES) == ZERO_TERMINAL | POSITIVE_TERMINAL


# ------------------------------------------------------------------------------------------------ shape of ᾱ


@pytest.mark.parametrize("T", [1000, 250])
@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_alpha_bar_is_a_schedule(name, T):
    ac = table(name, T)
    assert ac.dtype == np.float64 and ac.shape == (T,)
    assert np.all((ac >= 0) & (ac <= 1))
    assert np.all(np.diff(ac) <= 0)
    assert np.all(np.diff(ac)[:-1] < 0)  # strictly, except possibly onto the final 0
    assert 0.998 < ac[0] < 1


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_terminal_snr_as_stated(name):
    ac = table(name)
    if name in ZERO_TERMINAL:
        assert ac[-1] == 0.0 and S.terminal_snr(ac) == 0.0
        assert ac[-2] > 0  # only the last timestep has zero SNR
    else:
        assert S.terminal_snr(ac) > 0 and ac[-1] > 0


def test_reference_cosine_unchanged():
    # The released model's schedule: make_alphas_cumprod's default is bit-identical to the original function.
    ac = S.make_alphas_cumprod()
    np.testing.assert_array_equal(ac, S.cosine_alphas_cumprod())
    np.testing.assert_array_equal(S.make_alphas_cumprod("cosine", 1000, clip_beta=0.999),
                                  S.make_alphas_cumprod("cosine_clipped"))
    assert ac[0] == pytest.approx(0.9999587, abs=1e-7) and ac[-1] == 0.0


def test_cosine_clipped_is_iddpm():
    ac, ref = table("cosine_clipped"), table("cosine")
    betas = 1 - ac / np.concatenate([[1.0], ac[:-1]])
    assert betas.max() == pytest.approx(0.999, abs=1e-12)
    clipped = np.flatnonzero(betas >= 0.999 - 1e-12)
    np.testing.assert_array_equal(clipped, [999])  # only the last β exceeds 0.999 at T = 1000
    np.testing.assert_array_equal(ac[:-1], ref[:-1])


def test_linear_schedules_closed_form():
    T = 1000
    lin = table("linear")
    np.testing.assert_allclose(lin, np.cumprod(1 - np.linspace(1e-4, 2e-2, T)), rtol=1e-14)
    scaled = table("scaled_linear")  # LDM's make_beta_schedule("linear"): √β linear, squared
    np.testing.assert_allclose(scaled, np.cumprod(1 - np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, T) ** 2), rtol=1e-14)
    assert lin[0] == pytest.approx(1 - 1e-4, abs=1e-15) and scaled[0] == pytest.approx(1 - 0.0015, abs=1e-15)


@pytest.mark.parametrize("base", ["linear", "scaled_linear"])
def test_zero_snr_rescale_is_lin_et_al_algorithm_1(base):
    orig, new = np.sqrt(table(base)), np.sqrt(table(base + "_zero_snr"))
    assert new[0] == pytest.approx(orig[0], rel=1e-14) and new[-1] == 0.0
    # √ᾱ' is an affine map of √ᾱ: a shift by the last value and a scale fixing the first.
    scale = orig[0] / (orig[0] - orig[-1])
    np.testing.assert_allclose(new, (orig - orig[-1]) * scale, atol=1e-15)
    assert np.all(S.rescale_zero_terminal_snr(table(base)) == new ** 2)


def test_sigmoid_is_chen_2023():
    def chen(t, start=-3, end=3, tau=1.0):  # Chen 2023, Algorithm 1 (without its clip_min)
        sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
        return (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))

    T = 1000
    t = np.arange(1, T + 1) / T
    np.testing.assert_allclose(table("sigmoid")[:-1], chen(t)[:-1], rtol=1e-12)
    np.testing.assert_allclose(table("sigmoid", start=0.0, end=3.0, tau=1.1)[:-1], chen(t, 0, 3, 1.1)[:-1],
                               rtol=1e-12)
    assert table("sigmoid", clip_min=1e-9)[-1] == 1e-9  # Chen's own clip: terminal SNR 1e-9


@pytest.mark.parametrize("name", ["cosine", "sigmoid"])
def test_continuous_time_discretised_at_i_plus_1_over_T(name):
    T = 1000
    t = np.arange(1, T + 1) / T
    np.testing.assert_allclose(table(name), S.alpha_bar(name, t), rtol=1e-12, atol=1e-15)
    assert S.alpha_bar(name, 0.0) == pytest.approx(1.0, abs=1e-15) and S.alpha_bar(name, 1.0) == 0.0
    lam = S.log_snr(name, np.linspace(0, 1, 101))
    assert lam[0] == np.inf and lam[-1] == -np.inf and np.all(np.diff(lam) < 0)


# ------------------------------------------------------------------------------------------------ log-SNR shift


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_shift_one_is_identity_and_shift_moves_log_snr_by_2_log_s(name):
    base = table(name, shift=1.0) if name != "shifted_cosine" else table("cosine")
    if name != "shifted_cosine":
        np.testing.assert_array_equal(base, table(name))
    for s in (0.25, 0.5, 2.0):
        shifted = table(name, shift=s)
        inside = (base > 0) & (base < 1)
        np.testing.assert_allclose(S.table_log_snr(shifted)[inside] - S.table_log_snr(base)[inside],
                                   2 * math.log(s), rtol=0, atol=1e-9)
        np.testing.assert_array_equal(shifted[base == 0], 0.0)  # endpoints stay
        assert np.all(np.diff(shifted) <= 0)


def test_shifted_cosine_is_cosine_with_a_shift():
    np.testing.assert_array_equal(S.make_alphas_cumprod("shifted_cosine", shift=0.5),
                                  S.make_alphas_cumprod("cosine", shift=0.5))
    t = np.linspace(0.01, 0.99, 50)
    np.testing.assert_allclose(S.log_snr("cosine", t, shift=0.25) - S.log_snr("cosine", t), 2 * math.log(0.25),
                               atol=1e-9)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="unknown schedule"):
        S.make_alphas_cumprod("nope")
    with pytest.raises(ValueError, match="bad keyword"):
        S.make_alphas_cumprod("linear", 1000, clip_beta=0.9)
    with pytest.raises(ValueError, match="needs a shift"):
        S.make_alphas_cumprod("shifted_cosine")
    with pytest.raises(ValueError, match="shift"):
        S.make_alphas_cumprod("cosine", shift=0.0)
    with pytest.raises(ValueError, match="num_timesteps"):
        S.make_alphas_cumprod("cosine", 1)
    with pytest.raises(ValueError, match="not a non-increasing"):
        S.make_alphas_cumprod("linear", 1000, end=1.5)  # β > 1: negative ᾱ
    with pytest.raises(ValueError, match="continuous"):
        S.alpha_bar("linear", 0.5)


# ------------------------------------------------------------------------------------------------ parameterisations


def _alpha_grid():
    ac = S.cosine_alphas_cumprod()
    return np.concatenate([[1 - 1e-7, 1 - 1e-4], ac[[0, 1, 10, 250, 500, 750, 990, 998]], [1e-6, 1e-8]])


@pytest.mark.parametrize("src", pz.PARAMETERIZATIONS)
@pytest.mark.parametrize("dst", pz.PARAMETERIZATIONS)
def test_conversions_round_trip_for_every_pair(src, dst):
    rng = np.random.default_rng(0)
    a = _alpha_grid()[:, None, None]
    x0, eps = rng.standard_normal((2, len(a), 3, 5))
    sa, s1 = np.sqrt(a), np.sqrt(1 - a)
    x_t = sa * x0 + s1 * eps
    pred = pz.from_x0_eps(src, x0, eps, sa, s1)
    x0_hat, eps_hat = pz.to_x0_eps(src, x_t, pred, sa, s1)
    # errors scale with the conversions' conditioning: 1/√ᾱ (from ε) and 1/√(1−ᾱ) (to ε from x₀)
    tol = 1e-12 / np.minimum(sa, s1)
    assert np.all(np.abs(x0_hat - x0) <= tol) and np.all(np.abs(eps_hat - eps) <= tol)
    want = pz.from_x0_eps(dst, x0, eps, sa, s1)
    got = pz.from_x0_eps(dst, x0_hat, eps_hat, sa, s1)
    assert np.all(np.abs(got - want) <= 2 * tol)
    np.testing.assert_allclose(pz.to_v(src, x_t, pred, sa, s1), pz.v_target(x0, eps, sa, s1),
                               atol=1e-12 / min(sa.min(), s1.min()) if src != "v" else 0)
    # objectives' names are the same functions
    np.testing.assert_array_equal(objectives.training_target(src, x0, eps, sa, s1), pred)
    np.testing.assert_array_equal(objectives.prediction_to_x0_eps(src, x_t, pred, sa, s1)[0], x0_hat)


def test_conversions_at_zero_snr():
    # ᾱ = 0: v and x₀ predictions stay defined (v = −x₀, ε = x_t); ε says nothing about x₀.
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 4))
    for p in ("v", "x0"):
        pred = pz.from_x0_eps(p, x0, eps, 0.0, 1.0)
        x0_hat, eps_hat = pz.to_x0_eps(p, eps, pred, 0.0, 1.0)
        np.testing.assert_allclose(x0_hat, x0, atol=1e-15)
        np.testing.assert_allclose(eps_hat, eps, atol=1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert not np.all(np.isfinite(pz.to_x0_eps("eps", eps, eps, 0.0, 1.0)[0]))
    with pytest.raises(ValueError, match="unknown parameterization"):
        pz.to_v("score", 0.0, 0.0, 1.0, 0.0)


# ------------------------------------------------------------------------------------------------ DiffusionConfig


def test_diffusion_config_defaults_and_round_trip():
    d = DiffusionConfig()
    assert (d.schedule, d.kwargs, d.num_timesteps, d.parameterization) == ("cosine", {}, 1000, "v")
    np.testing.assert_array_equal(d.alphas_cumprod(), S.cosine_alphas_cumprod())
    assert DiffusionConfig.from_dict(None) == d == DiffusionConfig.from_dict({})
    e = DiffusionConfig("sigmoid", {"tau": 1.1, "start": 0.0, "shift": 0.5}, 500, "eps")
    assert e.schedule_kwargs == (("shift", 0.5), ("start", 0.0), ("tau", 1.1))
    assert hash(e) == hash(DiffusionConfig.from_dict(e.to_dict()))
    assert DiffusionConfig.from_dict(e.to_dict()) == e
    np.testing.assert_array_equal(e.alphas_cumprod(),
                                  S.make_alphas_cumprod("sigmoid", 500, tau=1.1, start=0.0, shift=0.5))
    assert not e.alphas_cumprod().flags.writeable


def test_diffusion_config_from_training_config():
    import importlib

    ldm = importlib.import_module("audiosr_jax.configs.ldm").get_config("tiny").ldm
    assert DiffusionConfig.from_ldm_config(ldm) == DiffusionConfig()
    ldm = ml_collections.ConfigDict(dict(ldm.to_dict(), schedule="linear_zero_snr", schedule_kwargs={"end": 0.012},
                                         num_timesteps=200, parameterization="x0"))
    assert DiffusionConfig.from_ldm_config(ldm) == DiffusionConfig("linear_zero_snr", {"end": 0.012}, 200, "x0")
    assert DiffusionConfig.from_ldm_config({"vae_from": "x"}) == DiffusionConfig()  # older runs: the defaults


@pytest.mark.parametrize("bad", [{"schedule": "nope"}, {"parameterization": "score"}, {"num_timesteps": 1},
                                 {"schedule_kwargs": {"wrong": 1}}, {"extra": 1}])
def test_diffusion_config_rejects_invalid(bad):
    with pytest.raises(ValueError):
        DiffusionConfig.from_dict(bad)


# ------------------------------------------------------------------------------------------------ inference checkpoint
# and pipeline: the weights carry the diffusion settings, generate() follows them


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint_dir):
    from audiosr_jax.inference.checkpoint import load_weights

    return load_weights(tiny_checkpoint_dir)


def test_architecture_json_round_trip_of_diffusion_settings(tiny, tmp_path):
    import dataclasses
    import json

    from audiosr_jax.inference.checkpoint import load_weights, save_weights
    from audiosr_jax.errors import CheckpointError

    assert tiny.diffusion == DiffusionConfig()  # the converter keeps the released model's settings
    setting = DiffusionConfig("scaled_linear_zero_snr", {"start": 0.001, "shift": 0.5}, 500, "eps")
    save_weights(dataclasses.replace(tiny, diffusion=setting), tmp_path / "w")
    arch = json.loads((tmp_path / "w" / "architecture.json").read_text())
    assert arch["diffusion"] == {"schedule": "scaled_linear_zero_snr",
                                 "schedule_kwargs": {"shift": 0.5, "start": 0.001},
                                 "num_timesteps": 500, "parameterization": "eps"}
    assert load_weights(tmp_path / "w").diffusion == setting
    # a directory written before the field existed reads as the released model
    del arch["diffusion"]
    (tmp_path / "w" / "architecture.json").write_text(json.dumps(arch))
    assert load_weights(tmp_path / "w").diffusion == DiffusionConfig()
    arch["diffusion"] = {"schedule": "cosine", "parameterization": "score"}
    (tmp_path / "w" / "architecture.json").write_text(json.dumps(arch))
    with pytest.raises(CheckpointError, match="architecture.json: invalid architecture.*score"):
        load_weights(tmp_path / "w")


@pytest.mark.parametrize("setting,sampler", [(DiffusionConfig("linear_zero_snr", {}, 600, "eps"), "heun"),
                                             (DiffusionConfig("sigmoid", {"shift": 0.5}, 1000, "x0"), "euler")])
def test_generate_follows_the_weights_diffusion_settings(tiny, setting, sampler):
    import dataclasses

    import jax

    from audiosr_jax.inference.pipeline import SamplingOptions, draw_noise, generate, item_keys, latent_shape, num_sampler_steps

    w = dataclasses.replace(tiny, diffusion=setting)
    opts, frames = SamplingOptions(steps=3, sampler=sampler), 32
    noise = draw_noise(item_keys(0, [0], [0]), latent_shape(frames, w), num_sampler_steps(opts, w))
    mel = np.random.default_rng(0).normal(-5.0, 1.0, (1, frames, 256)).astype(np.float32)
    out = generate(w, jax.numpy.asarray(mel), noise, opts)
    assert out["waveform"].shape == (1, 480 * frames + 16)
    assert all(np.all(np.isfinite(np.asarray(out[k]))) for k in ("latent", "waveform"))


def test_num_sampler_steps_follows_the_schedule_and_undefined_runs_fail_early(tiny):
    import dataclasses

    import jax

    from audiosr_jax.inference.pipeline import SamplingOptions, draw_noise, generate, item_keys, latent_shape, num_sampler_steps

    w600 = dataclasses.replace(tiny, diffusion=DiffusionConfig("cosine", {}, 600, "eps"))
    ddim6 = SamplingOptions(steps=6)
    assert num_sampler_steps(ddim6) == num_sampler_steps(ddim6, tiny) == 7  # t = 1, 167, …, 997 for T = 1000
    assert num_sampler_steps(ddim6, w600) == 6  # t = 1, 101, …, 501 for T = 600
    for sampler in ("dpmpp_2m", "unipc", "euler", "heun"):
        assert num_sampler_steps(SamplingOptions(steps=6, sampler=sampler), w600) == 6
    # an ε-model on a DDIM grid that reaches ᾱ = 0 (T = 600, S = 300: t = 599) is refused while tracing
    opts = SamplingOptions(steps=300)
    noise = draw_noise(item_keys(0, [0], [0]), latent_shape(16, w600), num_sampler_steps(opts, w600))
    with pytest.raises(ValueError, match="eps-prediction"):
        generate(w600, jax.numpy.full((1, 16, 256), -5.0), noise, opts)
