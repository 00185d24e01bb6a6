"""The flow and bridge objectives: time sampling, the training target and loss, `DiffusionConfig`, the LDM
stage's loss (with a stand-in network that knows the answer, and a few real steps at tiny width), and the
inference pipeline's flow/bridge sampling on a tiny checkpoint.

Conventions (`audiosr_jax.diffusion.flow`): x_t = (1 − t)·x₀ + t·x₁, u = x₁ − x₀, x₁ = ε (flow) or
c·scale + σ_b·ε (bridge), the UNet sees t·num_timesteps. The expected values here are computed independently
(numpy, or straight from those formulas), not with the module's own functions.
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiosr_jax.diffusion import flow, sampling
from audiosr_jax.diffusion.config import DiffusionConfig

B = 2


# ------------------------------------------------------------------------------------------------ time sampling


def test_logit_normal_median_and_shift():
    m, s, n = 0.7, 1.3, 40_001
    t = np.asarray(flow.sample_time(jax.random.key(0), n, "logit_normal", m, s))
    assert 0 < t.min() and t.max() < 1
    assert abs(np.median(t) - 1 / (1 + np.exp(-m))) < 0.01
    # the shift is monotone, so it moves the median to shift(sigmoid(m))
    ts = np.asarray(flow.sample_time(jax.random.key(0), n, "logit_normal", m, s, shift=3.0))
    med = 1 / (1 + np.exp(-m))
    assert abs(np.median(ts) - 3 * med / (1 + 2 * med)) < 0.01
    assert flow.time_shift(0.5, 3.0) == pytest.approx(3 / 4)
    assert flow.time_shift(0.5, 0.25) == pytest.approx(0.25 / 1.25)
    np.testing.assert_allclose(flow.time_shift(np.array([0.0, 1.0]), 7.0), [0.0, 1.0])


def test_uniform_time_mean():
    t = np.asarray(flow.sample_time(jax.random.key(1), 40_000, "uniform"))
    assert 0 <= t.min() and t.max() <= 1
    assert abs(t.mean() - 0.5) < 0.005
    assert abs(np.mean(t < 0.25) - 0.25) < 0.01
    with pytest.raises(ValueError, match="logit_normal"):
        flow.sample_time(jax.random.key(1), 4, "beta")


# ------------------------------------------------------------------------------------------------ target and loss


def test_loss_is_zero_at_the_exact_velocity_and_the_mse_otherwise():
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(3, 4, 8, 2)), rng.normal(size=(3, 4, 8, 2))
    t = np.array([0.1, 0.5, 0.9])
    x_t = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    np.testing.assert_allclose(flow.interpolate(jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t)), x_t, atol=1e-6)
    u = eps - x0  # what the network should output
    assert float(flow.flow_loss(jnp.asarray(u), jnp.asarray(x0), jnp.asarray(eps))) == pytest.approx(0, abs=1e-12)
    delta = rng.normal(size=u.shape)
    assert float(flow.flow_loss(jnp.asarray(u + delta), jnp.asarray(x0), jnp.asarray(eps))) == pytest.approx(
        np.mean(delta ** 2), rel=1e-5)
    # with a mask (as the band mask, [B, 1, F, 1]): errors where it is 0 do not count, the rest is a per-example mean
    mask = np.zeros((3, 1, 8, 1))
    mask[:, :, :3] = 1
    mask[2, :, :6] = 1
    per = [np.mean(delta[i][:, mask[i, 0, :, 0] > 0] ** 2) for i in range(3)]
    got = flow.flow_loss(jnp.asarray(u + delta), jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(mask))
    assert float(got) == pytest.approx(np.mean(per), rel=1e-5)
    only_masked = np.where(mask > 0, 0.0, delta)
    assert float(flow.flow_loss(jnp.asarray(u + only_masked), jnp.asarray(x0), jnp.asarray(eps),
                                jnp.asarray(mask))) == pytest.approx(0, abs=1e-12)
    # the bridge: the same with x₁ = c + σ_b·ε
    c = rng.normal(size=x0.shape)
    x1 = np.asarray(flow.bridge_start(jnp.asarray(c), jnp.asarray(eps), 0.5))
    np.testing.assert_allclose(x1, c + 0.5 * eps, atol=1e-6)
    assert float(flow.flow_loss(jnp.asarray(c + 0.5 * eps - x0), jnp.asarray(x0), jnp.asarray(x1))) == pytest.approx(
        0, abs=1e-10)


# ------------------------------------------------------------------------------------------------ DiffusionConfig


def test_diffusion_config_objective_round_trip_and_old_dicts():
    d = DiffusionConfig()
    assert d.objective == "diffusion"
    # a diffusion model's dict is unchanged (architecture.json as before the objective existed)
    assert set(d.to_dict()) == {"schedule", "schedule_kwargs", "num_timesteps", "parameterization"}
    old = {"schedule": "cosine", "schedule_kwargs": {}, "num_timesteps": 1000, "parameterization": "v"}
    assert DiffusionConfig.from_dict(old).objective == "diffusion"
    for e in (DiffusionConfig(objective="flow", flow_time_sampling="uniform", flow_time_shift=3.0),
              DiffusionConfig(objective="bridge", bridge_noise=0.25, flow_logit_mean=-0.5, flow_logit_std=0.8),
              DiffusionConfig(flow_time_shift=2)):  # a diffusion config with a non-default flow key keeps it
        back = DiffusionConfig.from_dict(e.to_dict())
        assert back == e and hash(back) == hash(e)
    f = DiffusionConfig(objective="flow").to_dict()
    assert f["objective"] == "flow" and f["bridge_noise"] == 0.5 and f["flow_time_shift"] == 1.0


@pytest.mark.parametrize("bad", [{"objective": "score"}, {"flow_time_sampling": "beta"}, {"flow_logit_std": 0},
                                 {"flow_time_shift": 0}, {"bridge_noise": -0.1}, {"flow_time_shift": float("nan")}])
def test_diffusion_config_refuses_bad_objective_settings(bad):
    with pytest.raises(ValueError):
        DiffusionConfig.from_dict(bad)


def test_diffusion_config_from_the_ldm_config():
    from audiosr_jax.configs import ldm as ldm_config

    ldm = ldm_config.get_config("tiny").ldm
    assert DiffusionConfig.from_ldm_config(ldm) == DiffusionConfig()
    ldm = ml_collections.ConfigDict(dict(ldm.to_dict(), objective="bridge", bridge_noise=0.3, flow_time_shift=2.0))
    assert DiffusionConfig.from_ldm_config(ldm) == DiffusionConfig(objective="bridge", bridge_noise=0.3,
                                                                   flow_time_shift=2.0)


def test_export_carries_the_objective():
    # training → inference: the LDM run's saved config (or a converted dir's architecture) → DiffusionConfig
    from types import SimpleNamespace

    from audiosr_jax.training.export import _diffusion

    run = SimpleNamespace(is_converted=False, path="run", train_config={"ldm": {
        "vae_from": "v", "schedule": "cosine", "objective": "bridge", "bridge_noise": 0.25, "flow_time_shift": 3.0}})
    assert _diffusion(run) == DiffusionConfig(objective="bridge", bridge_noise=0.25, flow_time_shift=3.0)
    older = SimpleNamespace(is_converted=False, path="run", train_config={"ldm": {"vae_from": "v"}})
    assert _diffusion(older).objective == "diffusion"
    converted = SimpleNamespace(is_converted=True, path="d",
                                architecture={"diffusion": DiffusionConfig(objective="flow").to_dict()})
    assert _diffusion(converted) == DiffusionConfig(objective="flow")


# ------------------------------------------------------------------------------------------------ LDM stage


def _ldm_cfg(**ldm):
    from audiosr_jax.configs import ldm as ldm_config

    c = ldm_config.get_config("tiny")
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    c.optim.warmup_steps = 0
    c.model.vae.ch_mult = [1, 1]  # one downsample
    c.model.unet.update(channel_mult=[1], attention_resolutions=[])  # one level, no attention: compiles fastest
    c.ldm.update(ldm)
    return c


def _stage(**ldm):
    from audiosr_jax.training.ldm import LDMStage
    from audiosr_jax.training.weights import architectures

    c = _ldm_cfg(**ldm)
    vae_cfg, unet_cfg, _ = architectures(c.model)
    return c, LDMStage(c, vae_cfg, unet_cfg)


class _Oracle:
    """Stands in for the UNet: returns `answer(x_t, cond, t_in)`, where the stage's input is concat([x_t, cond])."""

    def __init__(self, answer, channels):
        self.answer, self.channels, self.seen = answer, channels, []

    def apply(self, variables, inp, t):
        self.seen.append((inp[..., self.channels:], t))
        return self.answer(inp[..., :self.channels], inp[..., self.channels:], t)


def _with_oracle(stage, answer, z, cond):
    stage.latents = lambda vae_params, batch, key, scale: (z * scale, cond)
    stage.unet = _Oracle(answer, z.shape[-1])
    return stage


@pytest.mark.parametrize("objective", ["flow", "bridge"])
def test_stage_loss_is_zero_when_the_network_outputs_the_exact_velocity(objective):
    # x_t − x₀ = t·(x₁ − x₀) for both objectives, so u = (x_t − x₀)/t; the network is given t·T
    rng = np.random.default_rng(1)
    z, cond = jnp.asarray(rng.normal(size=(4, 4, 8, 2)), jnp.float32), jnp.asarray(rng.normal(size=(4, 4, 8, 2)),
                                                                                   jnp.float32)
    scale = np.float32(0.7)
    c, stage = _stage(objective=objective, num_timesteps=1000, flow_time_shift=2.0)
    x0 = z * scale
    _with_oracle(stage, lambda x_t, cnd, t: (x_t - x0) / (t / 1000.0)[:, None, None, None], z, cond)
    batch = {"audio": jnp.zeros((4, 3840))}
    for k in range(3):
        loss, m = stage.loss({"unet": {}}, {"vae": None, "scale_factor": scale}, batch, jax.random.key(k))
        assert float(loss) < 1e-8, (k, float(loss))
    t_in = np.asarray(stage.unet.seen[-1][1])
    assert t_in.dtype == np.float32 and np.all((t_in > 0) & (t_in < 1000)) and np.any(t_in != np.round(t_in))
    # a network that is off by d everywhere (no band mask: the batch has no bandwidth) pays d²
    _with_oracle(stage, lambda x_t, cnd, t: (x_t - x0) / (t / 1000.0)[:, None, None, None] + 0.5, z, cond)
    loss, _ = stage.loss({"unet": {}}, {"vae": None, "scale_factor": scale}, batch, jax.random.key(0))
    assert float(loss) == pytest.approx(0.25, rel=1e-4)


@pytest.mark.parametrize("drop", [0.0, 1.0])
def test_bridge_starts_from_the_real_scaled_condition(drop):
    # σ_b = 0: x₁ = c·scale exactly, so u = c·scale − x₀, from the real condition even where the dropout
    # blanks the UNet's copy (sampling always starts from it)
    from audiosr_jax.inference.pipeline import UNCONDITIONAL_LATENT

    rng = np.random.default_rng(2)
    z, cond = (jnp.asarray(rng.normal(size=(B, 4, 8, 2)), jnp.float32) for _ in range(2))
    scale = np.float32(0.6)
    c, stage = _stage(objective="bridge", bridge_noise=0.0, cfg_drop_prob=drop)
    _with_oracle(stage, lambda x_t, cnd, t: cond * scale - z * scale, z, cond)
    loss, m = stage.loss({"unet": {}}, {"vae": None, "scale_factor": scale}, {"audio": jnp.zeros((B, 3840))},
                         jax.random.key(0))
    assert float(loss) < 1e-10
    assert float(m["cfg_dropped"]) == drop
    seen_cond = np.asarray(stage.unet.seen[-1][0])
    expected = np.full(seen_cond.shape, UNCONDITIONAL_LATENT * scale) if drop else np.asarray(cond * scale)
    np.testing.assert_allclose(seen_cond, expected, rtol=1e-6)


def test_diffusion_objective_loss_is_unchanged():
    # the default objective: exactly the former computation (keys, t ~ U{0..T−1}, x_t, v target, MSE)
    from audiosr_jax.diffusion.schedules import make_alphas_cumprod

    rng = np.random.default_rng(3)
    z, cond = (jnp.asarray(rng.normal(size=(B, 4, 8, 2)), jnp.float32) for _ in range(2))
    scale = np.float32(0.5)
    c, stage = _stage(cfg_drop_prob=0.0)
    _with_oracle(stage, lambda x_t, cnd, t: 0.3 * x_t + 0.1 * cnd, z, cond)
    key = jax.random.key(5)
    loss, _ = stage.loss({"unet": {}}, {"vae": None, "scale_factor": scale}, {"audio": jnp.zeros((B, 3840))}, key)
    _, _, k_t, k_eps = jax.random.split(key, 4)
    t = jax.random.randint(k_t, (B,), 0, 1000)
    eps = np.asarray(jax.random.normal(k_eps, z.shape))
    a = np.asarray(make_alphas_cumprod("cosine", 1000), np.float32)[np.asarray(t)][:, None, None, None]
    x0 = np.asarray(z * scale)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    pred = 0.3 * x_t + 0.1 * np.asarray(cond * scale)
    v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    assert float(loss) == pytest.approx(np.mean((pred - v) ** 2), rel=1e-5)
    assert np.asarray(stage.unet.seen[-1][1]).dtype == np.int32


def test_stage_refuses_snr_weighting_for_flow():
    with pytest.raises(ValueError, match="uniform"):
        _stage(objective="flow", weighting="min_snr")
    with pytest.raises(ValueError, match="objective"):
        _stage(objective="consistency")


@pytest.fixture
def _rbg_prng():
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")  # cheaper to compile than threefry
    yield
    jax.config.update("jax_default_prng_impl", old)


def _wave(n):
    t = np.arange(n) / 48_000
    rng = np.random.default_rng(0)
    return jnp.asarray(np.stack([0.4 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(n)
                                 for f in (440.0, 1234.0)]), jnp.float32)


@pytest.mark.parametrize("objective", ["flow", "bridge"])
def test_tiny_ldm_trains_with_the_flow_objectives(objective, _rbg_prng):
    """A few optimizer steps on one fixed batch: finite metrics, the UNet moves, and the loss at a fixed key
    (same t and ε) goes down."""
    from audiosr_jax.degrade import LowpassSpec, response_params
    from audiosr_jax.models.vae import AutoencoderKL
    from audiosr_jax.training import state as st
    from audiosr_jax.training.loop import make_optimizers

    c, stage = _stage(objective=objective)
    n = 3_840
    batch = {"audio": _wave(n), "lowpass_params": response_params([LowpassSpec("ellip", 8, 4000.0),
                                                                   LowpassSpec("butter", 4, 11000.0)]),
             "bandwidth_hz": jnp.asarray([24_000.0, 11_000.0])}  # the band mask applies to the flow loss too
    vae_params = jax.jit(lambda k: AutoencoderKL(stage.vae_cfg).init(k, jnp.zeros((1, 8, 256, 1)))["params"])(
        jax.random.PRNGKey(1))
    frozen = {"vae": vae_params, "scale_factor": np.float32(0.5)}
    txs = make_optimizers(c, stage.groups)
    state0 = jax.jit(lambda k: st.create_state(stage.init(k, (B, n)), txs, stage.ema_groups))(jax.random.PRNGKey(0))
    step = jax.jit(partial(stage.train_step, txs=txs))
    probe = jax.jit(lambda p: stage.loss(p, frozen, batch, jax.random.PRNGKey(7))[0])
    before = float(probe(state0.params))
    state = state0
    for _ in range(8):
        state, m = step(state, frozen, batch)
        m = jax.device_get(m)
        assert bool(m["finite"]) and all(np.isfinite(v) for v in m.values()), m
    after = float(probe(state.params))
    assert np.isfinite(before) and after < before, (before, after)


# ------------------------------------------------------------------------------------------------ inference


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint_dir):
    from audiosr_jax.inference.checkpoint import load_weights

    return load_weights(tiny_checkpoint_dir)


def test_architecture_json_carries_the_objective(tiny, tmp_path):
    import json

    from audiosr_jax.inference.checkpoint import load_weights, save_weights

    setting = DiffusionConfig(objective="bridge", bridge_noise=0.2, flow_time_shift=2.5)
    save_weights(dataclasses.replace(tiny, diffusion=setting), tmp_path / "w")
    arch = json.loads((tmp_path / "w" / "architecture.json").read_text())
    assert arch["diffusion"]["objective"] == "bridge" and arch["diffusion"]["bridge_noise"] == 0.2
    assert load_weights(tmp_path / "w", lazy=True).diffusion == setting
    for key in ("objective", "flow_time_sampling", "flow_logit_mean", "flow_logit_std", "flow_time_shift",
                "bridge_noise"):
        del arch["diffusion"][key]  # as written before the objective existed
    (tmp_path / "w" / "architecture.json").write_text(json.dumps(arch))
    assert load_weights(tmp_path / "w", lazy=True).diffusion == DiffusionConfig()


def _unet_sample(w, sampler, steps, guidance=2.0, frames=16):
    """pipeline's UNet stage on a random condition, and the same run written out by hand."""
    from audiosr_jax.inference import pipeline
    from audiosr_jax.models.unet import UNetModel

    d = w.diffusion
    opts = pipeline.SamplingOptions(steps=steps, guidance=guidance, sampler=sampler)
    h, wd, ch = pipeline.latent_shape(frames, w)
    noise = pipeline.draw_noise(pipeline.item_keys(0, [0], [0]), (h, wd, ch), pipeline.num_sampler_steps(opts, w))
    cond = jax.random.normal(jax.random.key(3), (1, h, wd, ch))
    scale = jnp.float32(w.scale_factor)
    got = pipeline._STAGES["unet"](w.params["unet"], scale, cond, noise.x_T, noise.steps,
                                   configs=pipeline._configs(w), options=opts)
    unet = UNetModel(w.unet)
    uncond = jnp.full_like(cond, pipeline.UNCONDITIONAL_LATENT)

    def velocity(x, t):  # guidance on the velocity; the UNet sees t·T
        out = [unet.apply({"params": w.params["unet"]}, jnp.concatenate([x, cc * scale], -1), t * d.num_timesteps)
               for cc in (cond, uncond)]
        return out[1] + guidance * (out[0] - out[1])

    x1 = noise.x_T if d.objective == "flow" else cond * scale + d.bridge_noise * noise.x_T
    grid = [1.0 - i / steps for i in range(steps + 1)]
    grid = [d.flow_time_shift * t / (1 + (d.flow_time_shift - 1) * t) for t in grid]
    x = x1
    for i in range(steps):  # the textbook updates
        t, tn = grid[i], grid[i + 1]
        hh = tn - t
        u = velocity(x, jnp.full((1,), t))
        if sampler == "euler" or (sampler == "heun" and i == steps - 1):
            x = x + hh * u
        elif sampler == "heun":
            x = x + hh / 2 * (u + velocity(x + hh * u, jnp.full((1,), tn)))
        else:
            x = x + hh * velocity(x + hh / 2 * u, jnp.full((1,), t + hh / 2))
    return np.asarray(got), np.asarray(x)


@pytest.mark.parametrize("objective,sampler,shift", [("flow", "euler", 1.0), ("flow", "heun", 3.0),
                                                     ("flow", "midpoint", 1.0), ("bridge", "heun", 1.0),
                                                     ("bridge", "midpoint", 2.0)])
def test_pipeline_samples_flow_and_bridge_models(tiny, objective, sampler, shift):
    w = dataclasses.replace(tiny, diffusion=DiffusionConfig(objective=objective, flow_time_shift=shift,
                                                            bridge_noise=0.3))
    got, expected = _unet_sample(w, sampler, 3)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_generate_with_a_flow_model_and_refusals(tiny):
    from audiosr_jax import AudioSR
    from audiosr_jax.errors import UserError
    from audiosr_jax.inference.pipeline import (
        SamplingOptions,
        draw_noise,
        generate,
        item_keys,
        latent_shape,
        num_sampler_steps,
    )

    w = dataclasses.replace(tiny, diffusion=DiffusionConfig(objective="flow"))
    frames = 32
    opts = SamplingOptions(steps=2, sampler="midpoint")
    assert num_sampler_steps(opts, w) == 2 and sampling.num_network_calls("midpoint", 2) == 4
    noise = draw_noise(item_keys(0, [0], [0]), latent_shape(frames, w), num_sampler_steps(opts, w))
    mel = jnp.asarray(np.random.default_rng(0).normal(-5.0, 1.0, (1, frames, 256)), jnp.float32)
    out = generate(w, mel, noise, opts)
    assert out["waveform"].shape == (1, 480 * frames + 16)
    assert all(np.all(np.isfinite(np.asarray(out[k]))) for k in ("latent", "waveform"))
    # DDIM (and the other diffusion samplers) are refused for a flow model, naming the allowed ones
    with pytest.raises(ValueError, match=r"'ddim' is not available for a flow-objective model.*'midpoint'"):
        generate(w, mel, noise, SamplingOptions(steps=2, sampler="ddim"))
    # the API's one-line refusals, before anything runs
    assert AudioSR(w).options(steps=4, sampler="midpoint").sampler == "midpoint"
    with pytest.raises(UserError, match="dpmpp_2m.*choose from"):
        AudioSR(w).options(steps=4, sampler="dpmpp_2m")
    with pytest.raises(UserError, match="midpoint.*diffusion model"):
        AudioSR(tiny).options(steps=4, sampler="midpoint")
    with pytest.raises(ValueError, match="diffusion model"):
        sampling.sample("midpoint", lambda x, t: x, jnp.ones((1, 2)), tiny.diffusion.alphas_cumprod(), 4)


def test_cli_offers_midpoint():
    from audiosr_jax.cli.sample import parse_args

    assert parse_args(["in.wav", "-o", "out.wav", "--sampler", "midpoint"]).sampler == "midpoint"
    with pytest.raises(SystemExit):
        parse_args(["in.wav", "-o", "out.wav", "--sampler", "rk4"])
