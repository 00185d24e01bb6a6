"""The training loop shared by the three stages: mesh, sharded state, data, jitted step, checkpoints,
metrics, SIGTERM.

Everything device-side is one jitted ``stage.train_step`` with explicit in/out shardings (state sharded by
the config's logical-axis rules, batch on the batch axes); the host only feeds batches, writes summaries
and saves checkpoints. A resumed run restores state, RNG, step and the data iterator, so it continues
exactly where the interrupted one would have been.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from audiosr_jax import sharding as shd
from audiosr_jax.errors import UserError
from audiosr_jax.training import state as st
from audiosr_jax.training.checkpoints import Checkpointer
from audiosr_jax.training.optim import make_optimizer
from audiosr_jax.training.preemption import AgreedStop, StopFlag
from audiosr_jax.training.stages import build_stage, initial_params
from audiosr_jax.training.summary import SummaryWriter, compiled_flops, peak_flops

log = logging.getLogger(__name__)


class TrainingError(UserError):
    """A run that cannot go on (repeated non-finite steps, bad data/config), with a one-line reason."""


def state_specs(abstract: st.TrainState, txs: dict, rules, mesh) -> st.TrainState:
    """PartitionSpecs for every leaf of a TrainState (params by logical rules; moments and EMA follow)."""
    pspecs = {g: shd.param_specs(p, rules, mesh) for g, p in abstract.params.items()}
    return st.TrainState(
        step=P(), rng=P(), skipped=P(), consecutive_skipped=P(),
        params=pspecs,
        opt_state={g: shd.opt_state_specs(txs[g], abstract.opt_state[g], pspecs[g]) for g in abstract.opt_state},
        ema={g: pspecs[g] for g in abstract.ema},
    )


def make_optimizers(config: Any, groups, with_schedules: bool = False):
    """{group: optax transformation} (and {group: lr schedule} if ``with_schedules``):
    ``config.optim[group]`` if the config has per-group settings, else ``config.optim``."""
    total = int(config.train.total_steps)
    built = {g: make_optimizer(config.optim[g] if g in config.optim else config.optim, total) for g in groups}
    txs = {g: tx for g, (tx, _) in built.items()}
    return (txs, {g: lr for g, (_, lr) in built.items()}) if with_schedules else txs


class StepSetup(NamedTuple):
    """What a stage's train step needs, placed on a mesh: the stage, its optimizers and lr schedules, the
    state's init function, key, abstract shape and shardings, the frozen networks on the device, the mesh."""

    stage: Any
    frozen_host: dict
    txs: dict
    lrs: dict
    init_fn: Callable
    key: jax.Array
    abstract: st.TrainState
    state_sh: Any
    frozen: dict
    frozen_sh: dict
    mesh: Any


def prepare_step(config: Any, mesh, rules) -> StepSetup:
    """Build ``config.stage`` and everything around its step except the data and the checkpoint (shared by
    ``train`` and benchmarks/bench_train_stages.py)."""
    stage, frozen_host = build_stage(config)
    txs, lrs = make_optimizers(config, stage.groups, with_schedules=True)
    batch_shape = (int(config.train.batch_size), int(config.data.crop_samples))
    seed = int(config.train.seed)

    def init_fn(key):
        return st.create_state(stage.init(key, batch_shape), txs, stage.ema_groups, seed)

    key = jax.random.PRNGKey(seed)
    abstract = jax.eval_shape(init_fn, key)
    state_sh = shd.named(mesh, state_specs(abstract, txs, rules, mesh))
    frozen_specs = {k: (shd.param_specs(v, rules, mesh) if isinstance(v, dict) else P()) for k, v in frozen_host.items()}
    frozen_sh = shd.named(mesh, frozen_specs)
    frozen = jax.device_put(frozen_host, frozen_sh)
    return StepSetup(stage, frozen_host, txs, lrs, init_fn, key, abstract, state_sh, frozen, frozen_sh, mesh)


def jit_train_step(setup: StepSetup, batch_sh) -> Callable:
    """``stage.train_step`` jitted with the state, frozen and batch shardings; the state is donated.

    Traced under ``shd.grouped_convs_batch_sharded`` (grouped convs get wrong kernel gradients on a batch
    sharded over only some mesh axes). The metrics gain "consecutive_skipped" (the state's counter after
    the step): the host reads it from there, since the state itself is donated to the next step."""

    def step(state, frozen, batch):
        with shd.grouped_convs_batch_sharded(setup.mesh):
            new, metrics = setup.stage.train_step(state, frozen, batch, txs=setup.txs)
        return new, {**metrics, "consecutive_skipped": new.consecutive_skipped}

    return jax.jit(step, in_shardings=(setup.state_sh, setup.frozen_sh, batch_sh),
                   out_shardings=(setup.state_sh, None), donate_argnums=(0,))


def check_nonfinite_streak(step: int, consecutive: Any, limit: int) -> None:
    """TrainingError (one line) if ``consecutive`` (the count of non-finite steps in a row up to ``step``)
    reached ``limit`` (``train.max_consecutive_nonfinite``; <= 0: never stop)."""
    n = int(consecutive)
    if limit > 0 and n >= limit:
        raise TrainingError(f"stopping at step {step}: {n} consecutive steps had a non-finite loss or gradient "
                            f"(every one skipped; the last checkpoint is finite)")


def check_before_start(config: Any, mesh, rules, eval_loader: bool = True) -> None:
    """Refuse, before anything is compiled or read, a config whose batches or rules do not fit ``mesh``:
    ShardingError (one line naming the setting) for rules naming a missing mesh axis, a
    ``train.batch_size`` (and, with evaluation on and ``eval_loader`` (the config's validation loader),
    ``train.eval_batch_size``) that does not split into whole shards over the data-parallel axes and the
    processes, or a ``train.grad_accum`` whose micro-batch does not."""
    tc = config.train
    shd.check_rules(rules, mesh)
    batch, accum = int(tc.batch_size), int(tc.get("grad_accum", 1))
    shd.check_batch(batch, rules, mesh, "train.batch_size")
    if accum < 1 or batch % accum:
        raise shd.ShardingError(f"train.grad_accum {accum} does not divide train.batch_size {batch}")
    shards = shd.batch_axes_size(rules, mesh)
    if (batch // accum) % shards:
        raise shd.ShardingError(f"train.batch_size {batch} / train.grad_accum {accum} = micro-batch {batch // accum} "
                                f"does not divide over the {shards} data-parallel shards of mesh {dict(mesh.shape)}")
    if eval_loader and int(tc.get("eval_every", 0)) > 0 and int(tc.get("eval_batches", 0)) > 0:
        shd.check_batch(int(tc.eval_batch_size), rules, mesh, "train.eval_batch_size")


def batch_shardings(batch: Any, rules, mesh) -> Any:
    """A NamedSharding per leaf of ``batch``: its leading dim over the batch axes of ``rules`` on ``mesh``."""
    return jax.tree.map(lambda x: NamedSharding(mesh, shd.batch_spec(rules, mesh, np.ndim(x))), batch)


def _host(tree) -> dict:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def train(config: Any, workdir: str, *, train_iter: Any = None, eval_batches: Any = None,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Run (or resume) ``config.stage`` in ``workdir`` until ``config.train.total_steps``.

    ``train_iter``: an iterator of global batches with ``checkpoint_args()/restore_args()`` (default: the
    loader over ``config.data``). ``eval_batches``: a callable returning an iterable of validation batches.
    ``stop_after``: stop (with a checkpoint) after this many steps of this call — for tests and demos.
    Returns the last logged metrics (host floats) plus "step".
    """
    from audiosr_jax.training import data as train_data

    mesh = shd.mesh_from_config(config)
    rules = shd.rules_from_config(config.sharding_rules)
    tc = config.train
    accum = int(tc.get("grad_accum", 1))
    check_before_start(config, mesh, rules, eval_loader=eval_batches is None)
    log.info("mesh %s over %d process(es); process of each device: %s", dict(mesh.shape), jax.process_count(),
             shd.process_grid(mesh).tolist())
    setup = prepare_step(config, mesh, rules)
    stage, txs, lrs, key = setup.stage, setup.txs, setup.lrs, setup.key
    state_sh, frozen, frozen_sh = setup.state_sh, setup.frozen, setup.frozen_sh
    if train_iter is None:
        train_iter = train_data.make_train_iterator(config, mesh, rules)
    if eval_batches is None:
        eval_batches = train_data.make_eval_batches(config, mesh, rules)
    abstract_sh = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), setup.abstract, state_sh)

    config_dict = config.to_dict()
    ckpt = Checkpointer(workdir, config_dict, save_every=int(tc.save_every), keep=int(tc.keep_checkpoints),
                        async_save=bool(tc.get("async_checkpoints", True)))
    try:
        state, restored_step = ckpt.restore(abstract_sh, train_iter)
    except BaseException:
        ckpt.close()
        raise
    if state is None:
        state = jax.jit(setup.init_fn, out_shardings=state_sh)(key)
        init = initial_params(config)
        if init:
            params = {**state.params}
            for g, p in init.items():
                params[g] = jax.device_put(p, state_sh.params[g])
            ema = {g: jax.tree.map(jnp.copy, params[g]) for g in state.ema}
            state = state.replace(params=params, ema=ema,
                                  opt_state={g: txs[g].init(params[g]) for g in txs})
            state = jax.device_put(state, state_sh)
            log.info("fine-tuning from %s", tc.init_from)
        start = 0
    else:
        start = int(restored_step)
        log.info("resumed from step %d in %s", start, workdir)

    first = next(train_iter)
    batch_sh = batch_shardings(first, rules, mesh)
    saved = ckpt.saved_config(restored_step) if restored_step is not None else None
    frozen_updates, config_updates = stage.prepare(frozen, first, key, saved)
    for k, v in frozen_updates.items():
        frozen[k] = jax.device_put(v, frozen_sh[k])
    _merge_into(ckpt.config, config_updates)

    t0 = time.perf_counter()
    compiled = jit_train_step(setup, batch_sh).lower(state, frozen, first).compile()
    compile_s = time.perf_counter() - t0
    flops = compiled_flops(compiled)
    if flops:
        flops *= accum  # scan bodies are counted once
    peak = peak_flops(jax.devices()[0], str(tc.compute_dtype))
    log.info("compiled the %s step in %.1f s; %s FLOPs/step", stage.name, compile_s,
             f"{flops:.3g}" if flops else "unknown")

    writer = SummaryWriter(workdir)
    total = int(tc.total_steps)
    end = total if stop_after is None else min(total, start + int(stop_after))
    last: dict = {"step": start}
    pbar = None
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        pbar = tqdm(total=total, initial=start, desc=f"train {stage.name}", unit="step", dynamic_ncols=True)
    log_every, eval_every = int(tc.log_every), int(tc.eval_every)
    max_nan = int(tc.max_consecutive_nonfinite)
    batch, step = first, start
    window_t, window_steps = time.perf_counter(), 0
    # (step, its "consecutive_skipped") of the previous step: read once the next step is queued, so checking
    # every step costs no pipeline stall
    pending = None
    try:
        with StopFlag() as flag, AgreedStop(flag) as stop:  # several processes: all save the same step
            while step < end:
                state, metrics = compiled(state, frozen, batch)
                step += 1
                window_steps += 1
                if pending is not None:
                    check_nonfinite_streak(*pending, max_nan)
                pending = (step, metrics["consecutive_skipped"])
                if step % log_every == 0 or step == end:
                    host = _host(metrics)
                    dt = (time.perf_counter() - window_t) / max(window_steps, 1)
                    host.update({
                        "steps_per_s": 1.0 / dt, "examples_per_s": tc.batch_size / dt,
                        "skipped_steps": int(state.skipped), "compile_s": compile_s,
                        **{f"lr/{g}": float(f(step)) for g, f in lrs.items()},
                    })
                    if flops:
                        host["tflops_per_s"] = flops / dt / 1e12
                        if peak:
                            host["mfu"] = flops / dt / (peak * jax.device_count())
                    window_t, window_steps = time.perf_counter(), 0
                    writer.scalars(step, {f"train/{k}": v for k, v in host.items()})
                    last = {"step": step, **host}
                    if pbar:
                        pbar.set_postfix({k: f"{host[k]:.4g}" for k in ("loss", "grad_norm") if k in host})
                if eval_every and (step % eval_every == 0 or step == end):
                    ev = evaluate(stage, state, frozen, eval_batches, key, writer, step)
                    last.update({f"eval/{k}": v for k, v in ev.items()})
                if pbar:
                    pbar.update(1)
                stopping = stop(step)
                ckpt.save(step, state, train_iter, force=step == end or stopping)
                if stopping:
                    log.warning("stopped at step %d on request; checkpoint saved", step)
                    break
                if step < end:
                    batch = next(train_iter)
            if pending is not None:
                check_nonfinite_streak(*pending, max_nan)
    finally:
        if pbar:
            pbar.close()
        ckpt.close()
        writer.close()
    last["step"] = step
    return last


def _merge_into(target: dict, updates: dict) -> None:
    """Merge nested dict ``updates`` into ``target`` in place."""
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge_into(target[k], v)
        else:
            target[k] = v


def evaluate(stage, state, frozen, eval_batches, key, writer: SummaryWriter, step: int) -> dict:
    """Mean of ``stage.eval_step`` over the validation batches; previews (images/audio) of the first one."""
    if eval_batches is None:
        return {}
    sums: dict[str, float] = {}
    n = 0
    eval_fn = jax.jit(stage.eval_step)
    for i, batch in enumerate(eval_batches()):
        out = _host(eval_fn(state, frozen, batch, jax.random.fold_in(key, i)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if i == 0:
            _write_previews(stage.preview(state, frozen, batch, key), writer, step)
    means = {k: v / max(n, 1) for k, v in sums.items()}
    writer.scalars(step, {f"eval/{k}": v for k, v in means.items()})
    return means


def _write_previews(previews: dict, writer: SummaryWriter, step: int) -> None:
    from audiosr_jax.training.summary import spectrogram_image

    for name, value in previews.items():
        value = np.asarray(jax.device_get(value))
        if name.startswith("mel/"):
            writer.image(step, name, spectrogram_image(value, name))
        elif name.startswith("audio/"):
            writer.audio(step, name, value)
