"""Train-step cost of each training stage (vae, vocoder, ldm) on this machine, as ``train.py`` runs it.

  python benchmarks/bench_train_stages.py                                   # all stages, tiny and full
  python benchmarks/bench_train_stages.py --stages ldm --widths full --no-run   # cost analysis only
  python benchmarks/bench_train_stages.py --widths tiny --json /tmp/stages.json

For each (stage, width) the stage, its optimizers, initial state and shardings come from
``loop.prepare_step`` on its config preset (``audiosr_jax/configs/<stage>.py:<width>``), as ``loop.train`` makes them (on a
1-device mesh), and the step from ``loop.jit_train_step`` (explicit in/out shardings, the state donated). The batch comes from the real loader
(``training.data``'s loader settings: random crop, host low-pass for the LDM) over an in-memory corpus of
random audio. The LDM's frozen VAE is a randomly initialised VAE of the preset's architecture written to a
temporary VAE workdir (or ``--vae-from DIR``); its latent scale is measured on the first batch as the loop
does.

Reported: compile time (cold: no persistent cache), FLOPs and bytes accessed per step (XLA's cost analysis;
a ``lax.cond`` branch is counted whether it runs or not, a ``lax.scan`` body once: the figure is scaled by
``train.grad_accum`` as the loop does), the compiled program's memory (temp / argument / output / alias),
parameter counts per trained group, seconds per step (tiny: mean of ``--steps`` after ``--warmup``; full:
``--full-steps`` right after compile), achieved GFLOP/s and the MFU against this CPU's fp32 peak (measured
with a large ``jnp.dot``, or ``--peak-gflops``).

VAE: before ``vae.disc_start`` the discriminator phase is skipped (``lax.cond``). When the preset's
disc_start is > 0 (full: 50,001) both phases are timed with the same compiled program (the second with the
state's step set to disc_start); FLOPs and MFU refer to the adversarial phase, which XLA's count includes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from audiosr_jax import sharding as shd  # noqa: E402
from audiosr_jax.training import state as st  # noqa: E402
from audiosr_jax.training.discriminators import count_params  # noqa: E402
from audiosr_jax.training.loop import batch_shardings, jit_train_step, prepare_step  # noqa: E402
from audiosr_jax.training.summary import compiled_flops  # noqa: E402
from audiosr_jax.training.weights import architectures  # noqa: E402

STAGES = ("vae", "vocoder", "ldm")
WIDTHS = ("tiny", "reduced", "full")
SEGMENT = 491_520  # the corpus's 10.24 s segments at 48 kHz
# Default crops are the presets' (full: 5.12 s for the VAE and the LDM, 0.32 s for the vocoder); at batch 1
# every full-width step fits a 24 GB host (the largest, the VAE's, is ~11 GB: see the memory columns).


# ---------------------------------------------------------------------------------------------------- peak


def measure_peak_gflops(n: int = 2048, dtype=jnp.float32, min_seconds: float = 2.0) -> float:
    """Best-of-several GFLOP/s of an [n, n] @ [n, n] ``jnp.dot`` (2n³ FLOPs) on the default device."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)), dtype)
    b = jnp.asarray(rng.standard_normal((n, n)), dtype)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best, spent, reps = math.inf, 0.0, 0
    while reps < 3 or spent < min_seconds:
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return 2.0 * n**3 / best / 1e9


# -------------------------------------------------------------------------------------------------- config


def _apply_override(config, assignment: str) -> None:
    """``a.b.c=VALUE`` (VALUE a Python literal, else a string) on an ml_collections config."""
    key, _, raw = assignment.partition("=")
    if not _:
        raise SystemExit(f"--set {assignment!r}: expected KEY=VALUE")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *path, last = key.strip().split(".")
    node = config
    for p in path:
        node = node[p]
    node[last] = value


def stage_config(stage: str, width: str, batch: int | None, crop: int | None, dtype: str, overrides=()):
    """The preset's config on a 1-device mesh, with the benchmark's batch / crop / dtype."""
    config = importlib.import_module(f"audiosr_jax.configs.{stage}").get_config(width)
    config.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    if batch is None:
        batch = 1 if width == "full" else int(config.train.batch_size)
    if crop is None:
        crop = int(config.data.crop_samples)
    config.train.batch_size = int(batch)
    config.data.crop_samples = int(crop)
    config.train.compute_dtype = dtype
    for o in overrides:
        _apply_override(config, o)
    return config


# ---------------------------------------------------------------------------------------------------- data


class _RandomCorpus:
    """A random-access source like ``segments.open_split``: records {"audio": int16 [N], "valid_samples"}."""

    def __init__(self, n: int, samples: int, seed: int = 0):
        self.n, self.samples, self.seed = n, samples, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, int(i)])
        t = np.arange(self.samples) / 48_000
        x = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in rng.uniform(50, 20_000, size=4))
        x = x + 0.05 * rng.standard_normal(self.samples)
        return {"audio": np.clip(x * 32767, -32768, 32767).astype(np.int16), "valid_samples": self.samples}


def first_batch(config, mesh, rules) -> dict:
    """One global training batch of ``config`` from the real loader (the loop's settings) over random audio.

    The corpus holds exactly one batch and one epoch, so the loader's threads stop after it instead of
    prefetching in the background while steps are timed."""
    from audiosr_jax.data.loader import make_loader
    from audiosr_jax.training import data as train_data

    b = int(config.train.batch_size)
    cfg = train_data.loader_config(config, batch_size=b, train=True)
    cfg = dataclasses.replace(cfg, num_epochs=1, worker_count=0)
    source = _RandomCorpus(b, max(SEGMENT, int(config.data.crop_samples)), seed=int(config.data.seed))
    loader = make_loader(source, cfg, mesh, batch_axes=train_data.batch_axes_of(rules, mesh))
    try:
        return next(loader)
    finally:
        loader.close()


def write_random_vae_workdir(config, directory: str) -> str:
    """A VAE training workdir (one checkpoint, params {"vae"}) with random weights of ``config.model.vae``,
    for the LDM stage's ``ldm.vae_from``."""
    from audiosr_jax.models.vae import AutoencoderKL
    from audiosr_jax.training.checkpoints import Checkpointer

    vae_cfg = architectures(config.model)[0]
    f = vae_cfg.downsample_factor
    params = jax.jit(AutoencoderKL(vae_cfg).init)(jax.random.PRNGKey(1), jnp.zeros((1, 4 * f, 256, 1)))["params"]
    state = st.create_state({"vae": params}, {})
    ckpt = Checkpointer(directory, {"stage": "vae", "model": config.model.to_dict()}, save_every=1, keep=1,
                        async_save=False)
    ckpt.save(1, state, None, force=True)
    ckpt.close()
    return directory


# --------------------------------------------------------------------------------------------------- bench


def _mem(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # backends without it
        return {}
    if m is None:
        return {}
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k.replace("_size_in_bytes", "_bytes"): int(getattr(m, k, 0) or 0) for k in keys}


def _bytes_accessed(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    v = (cost or {}).get("bytes accessed")
    return float(v) if v and v > 0 else None


def _timed_steps(compiled, state, frozen, batch, n: int):
    """(mean seconds per step over n steps, final state, last metrics); steps are dispatched back to back."""
    t0 = time.perf_counter()
    metrics = None
    for _ in range(n):
        state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - t0) / n, state, metrics


def bench_stage(stage_name: str, width: str, *, batch=None, crop=None, dtype="float32", run=True,
                steps=5, warmup=1, full_steps=1, vae_from=None, overrides=(), workdir=None) -> dict:
    """Build, compile and (optionally) time one stage's train step. Returns a JSON-able dict."""
    config = stage_config(stage_name, width, batch, crop, dtype, overrides)
    tmp = None
    if stage_name == "ldm" and not config.ldm.vae_from:
        if vae_from:
            config.ldm.vae_from = vae_from
        else:
            tmp = tempfile.TemporaryDirectory(prefix="bench_vae_", dir=workdir)
            config.ldm.vae_from = write_random_vae_workdir(config, os.path.join(tmp.name, "vae"))
    try:
        return _bench(config, stage_name, width, run=run, steps=steps, warmup=warmup, full_steps=full_steps)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _bench(config, stage_name, width, *, run, steps, warmup, full_steps) -> dict:
    device = jax.devices()[0]
    mesh = shd.make_mesh(tuple(tuple(a) for a in config.mesh), devices=[device])
    rules = shd.rules_from_config(config.sharding_rules)
    tc = config.train
    accum = int(tc.get("grad_accum", 1))
    # initial state, shardings and the jitted step exactly as loop.train makes them (fresh start)
    setup = prepare_step(config, mesh, rules)
    stage, frozen_host, frozen, frozen_sh, key = setup.stage, setup.frozen_host, setup.frozen, setup.frozen_sh, setup.key
    batch_shape = (int(tc.batch_size), int(config.data.crop_samples))
    state_sh = setup.state_sh
    state = jax.jit(setup.init_fn, out_shardings=state_sh)(key)
    batch = first_batch(config, mesh, rules)
    batch_sh = batch_shardings(batch, rules, mesh)
    scale = None
    if stage_name == "ldm":
        scale = float(frozen_host["scale_factor"])
        if scale == 0:  # as loop._resolve_scale_factor on a fresh run: 1/std of the first batch's latents
            scale = float(jax.jit(stage.measure_scale_factor)(frozen["vae"], batch, key))
            frozen["scale_factor"] = jax.device_put(np.float32(scale), frozen_sh["scale_factor"])

    step_fn = jit_train_step(setup, batch_sh)
    t0 = time.perf_counter()
    lowered = step_fn.lower(state, frozen, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = compiled_flops(compiled)
    if flops:
        flops *= accum  # scan bodies are counted once (as the loop scales it)
    bytes_acc = _bytes_accessed(compiled)
    if bytes_acc:
        bytes_acc *= accum

    out = {
        "stage": stage_name, "width": width, "batch": batch_shape[0], "crop_samples": batch_shape[1],
        "crop_s": batch_shape[1] / 48_000, "dtype": str(tc.compute_dtype), "grad_accum": accum,
        "params": {g: count_params(state.params[g]) for g in stage.groups},
        "frozen_params": {k: count_params(v) for k, v in frozen_host.items() if isinstance(v, dict)},
        "compile_s": compile_s, "flops_per_step": flops, "bytes_accessed_per_step": bytes_acc,
        "memory": _mem(compiled), "scale_factor": scale,
    }
    if stage_name == "vae":
        out["disc_start"] = int(config.vae.disc_start) if config.vae.adversarial else None

    if run:
        n = max(1, int(full_steps if width == "full" else steps))
        w = 0 if width == "full" else max(0, int(warmup))
        if w:
            _, state, _ = _timed_steps(compiled, state, frozen, batch, w)
        vae_pre = stage_name == "vae" and out["disc_start"] is not None and out["disc_start"] >= int(state.step) + n
        dt, state, metrics = _timed_steps(compiled, state, frozen, batch, n)
        out["loss"] = float(metrics["loss"])
        out["finite"] = bool(metrics["finite"])
        if vae_pre:
            # the same program in its adversarial phase: move the state's step to disc_start
            out["step_s_before_disc_start"] = dt
            out["loss_before_disc_start"] = out.pop("loss")
            state = state.replace(step=jax.device_put(np.int32(out["disc_start"]), state_sh.step))
            dt, state, metrics = _timed_steps(compiled, state, frozen, batch, n)
            out["loss"] = float(metrics["loss"])
            out["finite"] = out["finite"] and bool(metrics["finite"])
        out.update(step_s=dt, steps_timed=n, warmup_steps=w, examples_per_s=batch_shape[0] / dt)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del state, frozen, compiled, lowered
    return out


# -------------------------------------------------------------------------------------------------- output


def _fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _gb(x) -> str:
    return f"{x / 1e9:.2f}" if x else "-"


def add_rates(r: dict, peak_gflops: float | None) -> dict:
    """GFLOP/s and MFU from a result of ``bench_stage``."""
    if r.get("step_s") and r.get("flops_per_step"):
        r["gflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e9
        r["mfu"] = r["gflops_per_s"] / peak_gflops if peak_gflops else None
    return r


def format_table(results: list[dict]) -> str:
    head = ("stage", "width", "batch x crop", "params (trained groups)", "compile s", "GFLOP/step", "GB acc",
            "temp/arg/out GB", "s/step", "GFLOP/s", "MFU")
    rows = []
    for r in results:
        m = r.get("memory", {})
        params = ", ".join(f"{g} {_fmt_count(n)}" for g, n in r["params"].items())
        step = f"{r['step_s']:.3f}" if r.get("step_s") else "-"
        if r.get("step_s_before_disc_start"):
            step += f" ({r['step_s_before_disc_start']:.3f} pre-GAN)"
        rows.append((
            r["stage"], r["width"], f"{r['batch']} x {r['crop_s']:.2f} s", params, f"{r['compile_s']:.1f}",
            f"{r['flops_per_step'] / 1e9:.1f}" if r.get("flops_per_step") else "-",
            _gb(r.get("bytes_accessed_per_step")),
            "/".join(_gb(m.get(k)) for k in ("temp_bytes", "argument_bytes", "output_bytes")) if m else "-",
            step,
            f"{r['gflops_per_s']:.1f}" if r.get("gflops_per_s") else "-",
            f"{100 * r['mfu']:.1f} %" if r.get("mfu") else "-",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def host_info() -> dict:
    return {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__,
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def main(argv=None) -> dict:
    """Parse ``argv``, run the benchmark, print the table; returns the JSON-able results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated: vae,vocoder,ldm")
    p.add_argument("--widths", default="tiny,full", help="comma-separated presets: tiny,reduced,full")
    p.add_argument("--batch", type=int, help="global batch (default: tiny/reduced = the preset's, full = 1)")
    p.add_argument("--crop", type=int, help="crop in samples at 48 kHz (default: the preset's; a multiple of 3840 "
                   "for the VAE, of 480 for the vocoder, of 30,720 for the full LDM)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="train.compute_dtype")
    p.add_argument("--no-run", action="store_true", help="compile and cost analysis only")
    p.add_argument("--steps", type=int, default=5, help="timed steps below full width (mean)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them (below full width)")
    p.add_argument("--full-steps", type=int, default=1, help="timed steps at full width, right after compile")
    p.add_argument("--peak-gflops", type=float, help="fp32 peak for the MFU (default: measured with jnp.dot)")
    p.add_argument("--vae-from", help="frozen VAE for the ldm stage (default: random weights, temporary dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.vae.ch_mult=[1,1] (all stages; repeatable)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    widths = [w.strip() for w in a.widths.split(",") if w.strip()]
    for s in stages:
        if s not in STAGES:
            p.error(f"unknown stage {s!r}; choose from {','.join(STAGES)}")
    for w in widths:
        if w not in WIDTHS:
            p.error(f"unknown width {w!r}; choose from {','.join(WIDTHS)}")

    t_start = time.perf_counter()
    info = host_info()
    if a.peak_gflops:
        peak, peak_src = float(a.peak_gflops), "--peak-gflops"
    else:
        peak, peak_src = measure_peak_gflops(), "measured: 2048^2 fp32 jnp.dot, best of >= 3"
    print(f"device: {info['device']} ({info['platform']}, {info['cpu_count']} cores, jax {info['jax']}), "
          f"load avg {info['loadavg_1m']:.2f}; fp32 peak {peak:.1f} GFLOP/s ({peak_src}); dtype {a.dtype}",
          flush=True)
    if "full" in widths:
        print(f"full width: batch {a.batch or 1}, crops "
              + (f"{a.crop} samples" if a.crop else "as the presets (5.12 s VAE/LDM, 0.32 s vocoder; all fit 24 GB)"),
              flush=True)

    results = []
    for w in widths:
        for s in stages:
            print(f"[{s} {w}] building and compiling ...", file=sys.stderr, flush=True)
            r = bench_stage(s, w, batch=a.batch, crop=a.crop, dtype=a.dtype, run=not a.no_run, steps=a.steps,
                            warmup=a.warmup, full_steps=a.full_steps, vae_from=a.vae_from, overrides=a.set)
            results.append(add_rates(r, peak))
            extra = ""
            if r.get("step_s"):
                extra = f", {r['step_s']:.3f} s/step, loss {r['loss']:.4g}"
            print(f"[{s} {w}] compiled in {r['compile_s']:.1f} s{extra}, peak RSS {r['peak_rss_gb']:.1f} GB",
                  file=sys.stderr, flush=True)
            gc.collect()
            jax.clear_caches()
    wall = time.perf_counter() - t_start
    print(format_table(results))
    print(f"MFU against the fp32 peak {peak:.1f} GFLOP/s; FLOPs/bytes from XLA's cost analysis; "
          f"memory = the compiled step's temp/argument/output buffers; wall time {wall:.0f} s")
    out = {"host": info, "peak_gflops": peak, "peak_source": peak_src, "dtype": a.dtype, "wall_s": wall,
           "results": results}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
