"""The distillation stage (progressive distillation with the guidance baked in): the target formula against the
DDIM sampler itself (an exact point-mass denoiser: x̃₀ = x₀; any teacher: one student step with x̃₀ lands where two
teacher steps do), nested grids and the round schedule, the round-0 teacher is the guided teacher UNet, the stage
trains through the normal loop on an 8-device data × fsdp mesh and reaches its last round (the saved teacher slot
is the end-of-round-0 student), and a run resumed mid-round equals the uninterrupted one bit for bit."""

import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from audiosr_jax.configs import distill as distill_config
from audiosr_jax.diffusion import progressive as pd
from audiosr_jax.diffusion.samplers import DDIMTables, ddim_sample
from audiosr_jax.diffusion.schedules import make_alphas_cumprod

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "fixtures" / "corpus_slice"
T = 1000
AC = make_alphas_cumprod("cosine", T)  # AudioSR's: unclipped, ᾱ_{T−1} = 0


# ------------------------------------------------------------------------------------------------ the maths


def test_grids_are_nested_and_rounds_map_steps_to_grid_sizes():
    for n_max in (8, 64, 512, 96):
        big = set(pd.step_grid(n_max, T).tolist())
        n = n_max
        while n % 2 == 0:
            n //= 2
            g = pd.step_grid(n, T)
            assert set(g.tolist()) <= big, (n_max, n)
            assert g[0] == 0 and g[-1] == T - 1 and np.all(np.diff(g) > 0) and len(g) == n + 1
            np.testing.assert_array_equal(pd.step_grid(2 * n, T)[::2], g)  # t_k of N is t_2k of 2N
    np.testing.assert_array_equal(pd.step_grid(4, T), [0, 250, 500, 749, 999])  # round half up: 749.25, 249.75
    with pytest.raises(ValueError):
        pd.step_grid(1000, T)  # points would coincide
    # 64 -> 4: four rounds; steps_per_round 10
    assert pd.check_schedule(64, 4, T) == 4
    for bad in ((64, 3), (48, 4), (4, 4), (2048, 4)):
        with pytest.raises(ValueError):
            pd.check_schedule(*bad, T)
    rounds = [pd.round_at(s, 10, 4) for s in range(0, 60)]
    assert rounds == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 30  # steps past the last round stay in it
    assert [pd.grid_sizes(r, 64) for r in range(4)] == [(64, 32), (32, 16), (16, 8), (8, 4)]
    assert [pd.rounds_done(s, 10, 4) for s in (0, 9, 10, 39, 40, 55)] == [0, 0, 1, 3, 4, 4]
    assert [pd.student_steps_at(s, 64, 4, 10) for s in (0, 1, 10, 11, 40, 55)] == [64, 32, 32, 16, 4, 4]
    assert int(pd.round_at(jnp.int32(25), 10, 4)) == 2


def _tables(ts) -> DDIMTables:
    """DDIM tables stepping through the descending timesteps ``ts`` (len k + 1: k steps, the last lands on ts[-1])."""
    ts = np.asarray(ts)
    return DDIMTables(ts[:-1].astype(np.int32), np.sqrt(AC[ts[:-1]]).astype(np.float32),
                      np.sqrt(1 - AC[ts[:-1]]).astype(np.float32), AC[ts[1:]].astype(np.float32),
                      np.zeros(len(ts) - 1, np.float32))


def _coef(t):
    return np.float32(np.sqrt(AC[t])), np.float32(np.sqrt(1 - AC[t]))


def _ddim(denoise, z, ts):
    return ddim_sample(denoise, z, jnp.zeros((len(ts) - 1,) + z.shape), _tables(ts))


@pytest.mark.parametrize("i", [1, 2, 4])  # student grid(4): i = 4 is t = T−1 (ᾱ = 0), i = 1 lands on t = 0
def test_target_of_an_exact_point_mass_denoiser_is_its_point(i):
    """The ideal denoiser of a point mass x₀ (v from the known x₀): its two DDIM steps and one step predicting x̃₀
    land on the same z, and x̃₀ = x₀."""
    rng = np.random.default_rng(i)
    x0 = jnp.asarray(rng.standard_normal((2, 4, 8, 3)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    g_s, g_t = pd.step_grid(4, T), pd.step_grid(8, T)
    t, t_mid, t_next = g_s[i], g_t[2 * i - 1], g_s[i - 1]
    assert g_t[2 * i] == t and g_t[2 * i - 2] == t_next
    (a, s), (a_n, s_n) = _coef(t), _coef(t_next)
    z_t = a * x0 + s * eps

    def exact(z, tt):  # v such that α·z − σ·v = x₀ at every t
        a_, s_ = jnp.sqrt(jnp.asarray(AC, jnp.float32))[tt[0]], jnp.sqrt(1 - jnp.asarray(AC, jnp.float32))[tt[0]]
        return (a_ * z - x0) / s_

    z_teacher = _ddim(exact, z_t, [t, t_mid, t_next])
    target = pd.distillation_target(z_t, z_teacher, a, s, a_n, s_n)
    np.testing.assert_allclose(target, x0, atol=2e-5, rtol=1e-5)
    z_student = _ddim(lambda z, tt: pd.v_from_x0(z, target, a, s), z_t, [t, t_next])
    np.testing.assert_allclose(z_student, z_teacher, atol=1e-5)
    np.testing.assert_allclose(z_teacher, a_n * x0 + s_n * eps, atol=2e-5)  # the deterministic trajectory


@pytest.mark.parametrize("i", [1, 3, 4])
def test_one_student_step_with_the_target_lands_where_two_teacher_steps_do(i):
    """Any teacher (here a nonlinear function of z and t): one DDIM step t → t'' predicting x̃₀ lands on the
    teacher's two-step z_t'' (x̃₀ is not x₀ now), and the stage's vectorised double step equals the sampler's."""
    rng = np.random.default_rng(10 + i)
    x0 = jnp.asarray(rng.standard_normal((2, 4, 8, 3)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    g_s, g_t = pd.step_grid(4, T), pd.step_grid(8, T)
    t, t_mid, t_next = g_s[i], g_t[2 * i - 1], g_s[i - 1]
    (a, s), (a_m, s_m), (a_n, s_n) = _coef(t), _coef(t_mid), _coef(t_next)
    z_t = a * x0 + s * eps

    def teacher(z, tt):
        return jnp.tanh(0.7 * z) + 0.3 * jnp.sin(z * tt[0].astype(jnp.float32) / 300.0)

    z_teacher = _ddim(teacher, z_t, [t, t_mid, t_next])
    mine = pd.ddim_step(z_t, teacher(z_t, jnp.full((2,), t)), a, s, a_m, s_m)
    mine = pd.ddim_step(mine, teacher(mine, jnp.full((2,), t_mid)), a_m, s_m, a_n, s_n)
    np.testing.assert_allclose(mine, z_teacher, atol=1e-5)
    target = pd.distillation_target(z_t, z_teacher, a, s, a_n, s_n)
    assert np.all(np.isfinite(target)) and float(jnp.max(jnp.abs(target - x0))) > 1e-2
    z_student = _ddim(lambda z, tt: pd.v_from_x0(z, target, a, s), z_t, [t, t_next])
    np.testing.assert_allclose(z_student, z_teacher, atol=1e-5)
    # the whole student grid through the sampler's own tables
    tables = pd.grid_ddim_tables(AC, 4)
    np.testing.assert_array_equal(tables.timesteps, g_s[1:][::-1])
    np.testing.assert_allclose(tables.alpha_prev, AC[g_s[:-1][::-1]].astype(np.float32))
    assert tables.timesteps[0] == T - 1 and float(tables.sqrt_alpha[0]) == 0.0
    spec = pd.DDIM_PROGRESSIVE  # the student's sampler spec: that grid, the DDIM update
    np.testing.assert_array_equal(spec.timesteps(AC, 4), g_s[1:][::-1])
    x_T = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
    np.testing.assert_array_equal(spec.run(teacher, x_T, AC, 4, 0.0, None),
                                  ddim_sample(teacher, x_T, jnp.zeros((4,) + x_T.shape), tables))


def test_the_student_sampler_is_one_registry_line_away(monkeypatch):
    """Registered in `sampling.REGISTRY`, DDIM_PROGRESSIVE samples through the generic entry point exactly as
    `ddim_sample` on the distillation grid, for v-models (eta and noise ignored: deterministic)."""
    from audiosr_jax.diffusion import sampling

    monkeypatch.setitem(sampling.REGISTRY, pd.DDIM_PROGRESSIVE.name, pd.DDIM_PROGRESSIVE)
    x_T = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 8, 3)), jnp.float32)

    def v(z, t):
        return jnp.tanh(z) * (t[:, None, None, None].astype(jnp.float32) / T)

    got = sampling.sample("ddim_progressive", v, x_T, AC, 4, parameterization="v", eta=0.0)
    np.testing.assert_array_equal(got, ddim_sample(v, x_T, jnp.zeros((4,) + x_T.shape), pd.grid_ddim_tables(AC, 4)))
    assert sampling.num_noise_steps("ddim_progressive", 4) == sampling.num_network_calls("ddim_progressive", 4) == 4


def test_truncated_snr_weight():
    a, s = _coef(np.array([0, 500, T - 1]))
    w = np.asarray(pd.truncated_snr_weight(a, s))
    np.testing.assert_allclose(w, [AC[0] / (1 - AC[0]), 1.0, 1.0], rtol=1e-4)


# ------------------------------------------------------------------------------------------------ the stage


def _config(teacher, dataset="", **distill):
    c = distill_config.get_config("tiny")
    c.mesh = (("data", 4), ("fsdp", 2), ("tensor", 1))
    c.distill.update(dict(teacher=str(teacher), teacher_steps=8, student_steps=2, steps_per_round=2, **distill))
    c.data.dataset_dir = str(dataset)
    c.data.crop_samples = 15_360
    # orbax saves dominate on CPU (~15 s each here): save only at the round boundaries (and forced stops)
    c.train.update(total_steps=4, batch_size=8, log_every=1, eval_every=0, save_every=2, keep_checkpoints=5,
                   async_checkpoints=False)
    return c


@pytest.fixture(scope="module")
def built(tiny_checkpoint_dir):
    from audiosr_jax.training.stages import build_stage

    return build_stage(_config(tiny_checkpoint_dir))


def test_round0_teacher_is_the_guided_teacher_unet(built):
    """Round 0: v_u + w·(v_c − v_u) of the teacher UNet (uncond = the constant −11.4981 latent, both scaled as the
    pipeline does); later rounds: v_c alone."""
    from audiosr_jax.inference.pipeline import UNCONDITIONAL_LATENT

    stage, frozen = built
    assert stage.name == "distill" and stage.guidance == 3.5 and stage.rounds == 2
    p, sf = frozen["teacher"], frozen["scale_factor"]
    rng = np.random.default_rng(0)
    c = stage.unet_cfg.in_channels // 2
    x = jnp.asarray(rng.standard_normal((2, 4, 16, c)), jnp.float32)
    cond = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    t = jnp.asarray([999, 300], jnp.int32)

    def unet(c_):
        return stage.unet.apply({"params": p}, jnp.concatenate([x, c_ * sf], axis=-1), t)

    v_c, v_u = unet(cond), unet(jnp.full_like(cond, UNCONDITIONAL_LATENT))
    assert float(jnp.max(jnp.abs(v_c - v_u))) > 1e-3  # the guidance matters for this teacher
    fn = jax.jit(stage.teacher_velocity)
    np.testing.assert_allclose(fn(p, x, t, cond, 0, sf), v_u + 3.5 * (v_c - v_u), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fn(p, x, t, cond, 1, sf), v_c, rtol=1e-5, atol=1e-5)


def test_train_and_eval_steps_trace_with_grad_accum(tiny_checkpoint_dir):
    """Shapes only (no compile): the step with 2 micro-batches and the validation step give scalar metrics."""
    from functools import partial

    from audiosr_jax.training import state as st
    from audiosr_jax.training.loop import make_optimizers
    from audiosr_jax.training.stages import build_stage

    cfg = _config(tiny_checkpoint_dir)
    cfg.train.grad_accum = 2
    stage, frozen = build_stage(cfg)
    txs = make_optimizers(cfg, stage.groups)
    state = jax.eval_shape(lambda k: st.create_state(stage.init(k, (4, 15_360)), txs, stage.ema_groups),
                           jax.random.PRNGKey(0))
    assert set(state.params) == {"unet", "teacher"} and set(state.opt_state) == set(state.ema) == {"unet"}
    batch = {"audio": jax.ShapeDtypeStruct((4, 15_360), jnp.float32),
             "lowpass": jax.ShapeDtypeStruct((4, 15_360), jnp.float32)}
    new, metrics = jax.eval_shape(partial(stage.train_step, txs=txs), state, frozen, batch)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert {"loss", "grad_norm", "round", "student_steps", "finite"} <= set(metrics)
    assert all(m.shape == () for m in metrics.values())
    ev = jax.eval_shape(stage.eval_step, state, frozen, batch, jax.random.PRNGKey(1))
    assert set(ev) == {"loss", "loss_ema"} and all(v.shape == () for v in ev.values())


def test_round_boundaries_set_the_student_ema_and_teacher(built):
    """begin_step on a toy state (2 rounds of 2 steps): step 0 copies the frozen teacher into the student, its EMA
    and the teacher slot; the first step of round 1 makes the student the teacher and restarts the EMA from it;
    every other step (mid-round, past the last round) leaves the state alone."""
    from audiosr_jax.training import state as st

    stage, _ = built
    frozen = {"teacher": {"w": jnp.float32(5.0)}}

    def at(step):
        params = {"unet": {"w": jnp.float32(1.0)}, "teacher": {"w": jnp.float32(2.0)}}
        s = st.TrainState(step=jnp.int32(step), params=params, opt_state={}, ema={"unet": {"w": jnp.float32(3.0)}},
                          rng=jax.random.PRNGKey(0), skipped=jnp.int32(0), consecutive_skipped=jnp.int32(0))
        s = jax.jit(stage.begin_step)(s, frozen)
        return float(s.params["unet"]["w"]), float(s.params["teacher"]["w"]), float(s.ema["unet"]["w"])

    assert at(0) == (5.0, 5.0, 5.0)
    assert at(1) == at(3) == at(4) == at(6) == (1.0, 2.0, 3.0)
    assert at(2) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------------ the loop


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from audiosr_jax.data.segments import SegmentConfig, build_dataset

    return build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, tmp_path_factory.mktemp("tfds"),
                         config=SegmentConfig(segment_seconds=0.64, validation_fraction=0.3))


def _saved(workdir, step, where="params"):
    """{group: params} of ``where`` ("params" / "ema") in the checkpoint of ``step`` (host numpy)."""
    state_dir = Path(workdir) / "checkpoints" / str(step) / "state"
    handler = ocp.StandardCheckpointHandler()
    try:
        tree = handler.metadata(state_dir).tree
    finally:
        handler.close()
    item = {where: tree[where]}
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.PyTreeCheckpointer() as reader:
        return reader.restore(state_dir, args=ocp.args.PyTreeRestore(item, restore_args=args,
                                                                    partial_restore=True))[where]


def _equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def uninterrupted(dataset, tiny_checkpoint_dir, tmp_path_factory):
    from audiosr_jax.training.loop import train

    wd = tmp_path_factory.mktemp("distill_full")
    last = train(_config(tiny_checkpoint_dir, dataset), str(wd), progress=False)
    return wd, last


def test_distill_trains_through_the_loop_and_reaches_the_last_round(uninterrupted, tiny_checkpoint_dir):
    """8 → 2 steps in 2 rounds of 2 steps on a (data 4, fsdp 2) mesh: finite losses, the last step trained round 1
    (2-step student), the saved teacher slot is the given teacher through round 0 and the end-of-round-0 student
    after, and the saved config records the student's sampler for export."""
    from audiosr_jax.inference.checkpoint import sampling_defaults
    from audiosr_jax.training.checkpoints import Checkpointer
    from audiosr_jax.training.distill import DistillStage, read_teacher

    wd, last = uninterrupted
    assert last["step"] == 4 and np.isfinite(last["loss"]) and np.isfinite(last["grad_norm"])
    assert last["round"] == 1 and last["student_steps"] == 2
    assert pd.rounds_done(4, 2, 2) == 2 == int(np.log2(8 / 2))
    teacher0, _ = read_teacher(tiny_checkpoint_dir)
    s2, s4 = _saved(wd, 2), _saved(wd, 4)
    assert _equal(s2["teacher"], teacher0)  # round 0: the given teacher
    assert not _equal(s2["unet"], teacher0)  # the student trained
    assert _equal(s4["teacher"], s2["unet"])  # round 1: the end-of-round-0 student
    assert not _equal(s4["unet"], s2["unet"])
    ckpt = Checkpointer(str(wd), _config(tiny_checkpoint_dir).to_dict(), save_every=2, keep=5, async_save=False)
    try:
        saved = ckpt.saved_config(4)
    finally:
        ckpt.close()
    assert saved["stage"] == "distill"
    assert saved["sampling"] == {"sampler": "ddim_progressive", "steps": 2, "eta": 0.0, "guidance": 1.0}
    assert sampling_defaults(saved["sampling"]) == saved["sampling"]  # architecture.json's format, as is
    # what export should write for a checkpoint of each step: the student of the round its last step trained
    assert DistillStage.exported_sampling(saved, 4) == saved["sampling"]
    assert [DistillStage.exported_sampling(saved, s).get("steps") for s in (0, 1, 2, 3)] == [None, 4, 4, 2]
    assert saved["ldm"]["parameterization"] == "v" and saved["ldm"]["scale_factor"] > 0
    assert saved["ldm"]["vae_from"] == str(tiny_checkpoint_dir)
    # the student is a teacher in its turn (a 4 → 2 → 1 chain): its EMA weights and its diffusion settings
    student, info = read_teacher(str(wd))
    assert info["stage"] == "distill" and info["diffusion"].parameterization == "v"
    assert info["vae_from"] == str(tiny_checkpoint_dir) and info["scale_factor"] == saved["ldm"]["scale_factor"]
    assert _equal(student, _saved(wd, 4, "ema")["unet"]) and not _equal(student, s4["unet"])


def test_resume_mid_round_equals_uninterrupted(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path, caplog):
    """Stopped at step 3 (inside round 1, after the teacher swap at step 2) and resumed: every saved group (the
    student, its EMA and the round's teacher) equals the uninterrupted run's, bit for bit."""
    from audiosr_jax.training.loop import train

    wd, _ = uninterrupted
    cfg = _config(tiny_checkpoint_dir, dataset)
    cfg.train.save_every = 100  # only the forced saves: at the stop (3) and the end (4)
    assert train(cfg, str(tmp_path), stop_after=3, progress=False)["step"] == 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="audiosr_jax.training.loop"):
        assert train(cfg, str(tmp_path), progress=False)["step"] == 4  # a fresh start would stop at 4 too, so:
    assert [int(m) for m in re.findall(r"resumed from step (\d+)", caplog.text)] == [3]
    for where in ("params", "ema"):
        a, b = _saved(tmp_path, 4, where), _saved(wd, 4, where)
        assert set(a) == set(b) and _equal(a, b), where


def test_export_of_a_student_samples_as_its_checkpoint_says(uninterrupted, tiny_checkpoint_dir, tmp_path):
    """export.py takes a distill workdir as --ldm; the checkpoint says "2-step progressive DDIM, no guidance",
    AudioSR uses that unless told otherwise, and the student's 2 network calls run end to end."""
    import json

    from audiosr_jax import AudioSR
    from audiosr_jax.inference.pipeline import SamplingOptions
    from audiosr_jax.training.export import export_weights
    from audiosr_jax.training.weights import read_trained_params

    workdir, _ = uninterrupted
    out = tmp_path / "student"
    w = export_weights(tiny_checkpoint_dir, str(workdir), tiny_checkpoint_dir, str(out))
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["sampling"] == {"sampler": "ddim_progressive", "steps": 2, "eta": 0.0, "guidance": 1.0}
    ema, _ = read_trained_params(str(workdir), "unet", prefer_ema=True)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(w.params["unet"]), jax.tree.leaves(ema)))
    sr = AudioSR.from_pretrained(str(out), devices=1)
    assert sr.options() == SamplingOptions(2, 1.0, 0.0, "ddim_progressive", "float32")
    y = sr(np.sin(np.linspace(0, 300, 16000)).astype(np.float32), 16000, seed=1)
    assert y.shape == (48000,) and np.isfinite(y).all()
