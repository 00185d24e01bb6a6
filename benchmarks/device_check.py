"""Accelerator check: the figures to read off a lent accelerator machine, most important first, in one run.

    bash benchmarks/device_check.sh                      # on the accelerator machine (≤ 8 minutes)
    bash benchmarks/device_check.sh --dry-run --out x.json   # CPU, tiny width: every code path (~1.5 min)

Sections, each guarded (a failure prints one line and the next section runs):
  environment  device kind and count, jax/jaxlib, the CUDA driver (nvidia-smi), the bf16 peak used for MFU;
  inference    full width, synthetic weights in the release's shapes: `pipeline.super_resolve_windows` with
               the weights replicated and the windows sharded over a mesh of all devices, as the batch engine
               (sample.py) runs it; per (dtype, sampler, batch): compile s, s per 5.12 s window, × real time,
               the program's memory and the process's peak device memory;
  training     the full-width train step of each stage (ldm first, then vae, vocoder) in bf16 as
               `bench_train_stages.bench_stage` builds it (loop.prepare_step / jit_train_step), at the
               largest batch that fits: step s, TFLOP/s (XLA's cost analysis), MFU against the bf16 peak.
Every figure is printed (flushed) as soon as it exists and the JSON (--out) is rewritten after each one, so a
run cut short still leaves what it measured. A time budget (--budget-s) skips what would not fit, and a
watchdog ends the process shortly after it, JSON written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SAMPLE_RATE = 48_000
WATCHDOG_GRACE_S = 40.0
DRY_RUN_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# jax's device_kind strings that summary.PEAK_FLOPS' names do not match
TPU_KIND_ALIASES = (("TPU v5 lite", "TPU v5e"), ("TPU v6 lite", "TPU v6e"), ("TPU v5", "TPU v5p"))


# --------------------------------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class InferenceItem:
    dtype: str
    sampler: str
    steps: int
    batch: int  # windows per device, as sample.py's --batch-size


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one mode measures. train_batches: per stage, candidate global batches, largest first."""

    width: str
    inference: tuple[InferenceItem, ...]
    train_stages: tuple[str, ...]
    train_batches: dict = dataclasses.field(default_factory=dict)
    train_overrides: dict = dataclasses.field(default_factory=dict)  # per stage: bench_stage's "KEY=VALUE" config overrides
    train_steps: int = 3
    window_samples: int = 245_760  # one window: 5.12 s at 48 kHz, 512 mel frames (the model's quantum)
    min_item_s: float = 45.0  # no item is started with less time left than this (or the slowest so far)
    inference_share: float = 0.5  # of the budget: inference stops there, training has the rest


def _full_inference() -> tuple[InferenceItem, ...]:
    # First the reference's setting (comparable with the CPU tables), then the fastest expected one, then the
    # rest, each batch sweep small to large.
    first = [InferenceItem("float32", "ddim", 50, 1), InferenceItem("bfloat16", "dpmpp_2m", 10, 32)]
    rest = [InferenceItem(d, s, n, b) for d, s, n in (("bfloat16", "dpmpp_2m", 10), ("bfloat16", "ddim", 50),
                                                       ("float32", "dpmpp_2m", 10), ("float32", "ddim", 50))
            for b in (1, 8, 32)]
    return tuple(first + [i for i in rest if i not in first])


FULL = Plan(
    width="full",
    inference=_full_inference(),
    train_stages=("ldm", "vae", "vocoder"),
    # Each OOM costs a full compile (1-2 minutes at full width), so each list starts at the largest batch
    # expected to fit 139 GB in bf16, from the fp32 temporaries per example measured on CPU
    # (docs/performance.md §Training steps: ldm 2.9 GB, vae 8.1 GB, vocoder 3.4 GB); --batches tries others.
    train_batches={"ldm": (32, 16, 8, 4, 2, 1), "vae": (16, 8, 4, 2, 1), "vocoder": (32, 16, 8, 4, 2, 1)},
)

DRY_RUN = Plan(
    width="tiny",
    # both dtypes, both samplers and both batch sizes in two compiles
    inference=(InferenceItem("float32", "ddim", 2, 1), InferenceItem("bfloat16", "dpmpp_2m", 2, 2)),
    train_stages=("ldm", "vae", "vocoder"),
    train_batches={"ldm": (2, 1), "vae": (2, 1), "vocoder": (2, 1)},
    # one discriminator instead of three: a third of the vocoder step's compile time
    train_overrides={"vocoder": ('vocoder_train.disc.kinds=["mpd"]', "vocoder_train.disc.periods=[2]")},
    train_steps=1,
    window_samples=30_720,  # 0.64 s: 64 mel frames, the shortest the release's latent factors allow
    min_item_s=0.0,
)


# -------------------------------------------------------------------------------------------------- report


class Report:
    """The run's figures: printed line by line (flushed) and kept as a JSON-able dict, saved to `path` after
    every addition. In: the output path and the time budget; sections are dicts under `data`."""

    def __init__(self, path: str, budget_s: float, mode: str):
        self.path, self.budget_s, self.t0 = path, float(budget_s), time.perf_counter()
        self.data: dict = {"mode": mode, "budget_s": self.budget_s, "skipped": [], "errors": []}
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self, share: float = 1.0) -> float:
        """Seconds left until `share` of the budget has passed."""
        return share * self.budget_s - self.elapsed()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def section(self, name: str) -> dict:
        return self.data.setdefault(name, {})

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"item": what, "why": why})
        self.say(f"skipped {what}: {why}")
        self.save()

    def error(self, what: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        self.data["errors"].append({"item": what, "error": msg})
        self.say(f"FAILED {what}: {msg}")
        self.save()

    def save(self) -> None:
        """Write the JSON (atomically: a watchdog may save concurrently)."""
        with self.lock:
            self.data["wall_s"] = self.elapsed()
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1, default=_json_default)
            os.replace(tmp, self.path)


def _json_default(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


@contextlib.contextmanager
def guarded(report: Report, what: str):
    """Run the block; an exception is reported in one line and swallowed (the check goes on)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure is a finding, never a stop
        report.error(what, exc)


def start_watchdog(report: Report, grace_s: float = WATCHDOG_GRACE_S) -> threading.Timer:
    """End the process `grace_s` after the budget (a compile can overrun it), with the JSON written."""

    def stop():
        report.data["aborted"] = f"watchdog: budget {report.budget_s:.0f} s + {grace_s:.0f} s passed"
        report.say(report.data["aborted"] + "; stopping")
        with contextlib.suppress(Exception):
            report.save()
        os._exit(3)

    timer = threading.Timer(report.budget_s + grace_s, stop)
    timer.daemon = True
    timer.start()
    return timer


def fits_in_time(report: Report, what: str, estimate_s: float, share: float = 1.0) -> bool:
    """Whether `estimate_s` more seconds fit before `share` of the budget; reports a skip when not."""
    left = report.left(share)
    if left >= estimate_s:
        return True
    report.skip(what, f"{max(left, 0):.0f} s left of this section's time, needs ~{estimate_s:.0f} s")
    return False


# ---------------------------------------------------------------------------------------------- environment


def bf16_peak_flops(device) -> float | None:
    """Dense bf16 peak FLOP/s of one device (summary.PEAK_FLOPS), or None when the kind is not listed."""
    from audiosr_jax.training.summary import PEAK_FLOPS, peak_flops

    peak = peak_flops(device, "bfloat16")
    if peak is None:
        kind = getattr(device, "device_kind", "")
        for prefix, name in TPU_KIND_ALIASES:
            if kind.startswith(prefix):
                return PEAK_FLOPS[name]["bfloat16"]
    return peak


def nvidia_smi() -> dict:
    """GPU name, driver and CUDA version from nvidia-smi ({} where it is absent or fails)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    out = {}
    with contextlib.suppress(Exception):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        if q:
            name, driver, mem = (s.strip() for s in q[0].split(",")[:3])
            out.update(gpu_name=name, driver_version=driver, gpu_memory=mem, gpu_count=len(q))
    with contextlib.suppress(Exception):
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        if m:
            out["cuda_driver_version"] = m.group(1)
    return out


def device_memory_limit(device) -> int | None:
    """Bytes the allocator may hand out on `device`, or None where the backend keeps no statistics (CPU)."""
    stats = _memory_stats(device)
    return int(stats["bytes_limit"]) if stats.get("bytes_limit") else None


def peak_device_bytes() -> int | None:
    """The largest `peak_bytes_in_use` over the local devices so far in this process (None on CPU)."""
    import jax

    peaks = [_memory_stats(d).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [int(p) for p in peaks if p]
    return max(peaks) if peaks else None


def _memory_stats(device) -> dict:
    try:
        return device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without statistics
        return {}


def check_environment(report: Report) -> None:
    """Section a: what the figures below were measured on."""
    import jax
    import jaxlib

    dev = jax.devices()
    env = report.section("environment")
    env.update(device_kind=dev[0].device_kind, platform=dev[0].platform, device_count=len(dev),
               local_device_count=jax.local_device_count(), process_count=jax.process_count(),
               jax=jax.__version__, jaxlib=jaxlib.__version__, python=platform.python_version(),
               cpu_count=os.cpu_count(), host=platform.node())
    with contextlib.suppress(Exception):
        env["backend_platform_version"] = dev[0].client.platform_version
    env["device_memory_limit_bytes"] = device_memory_limit(dev[0])
    env["mem_fraction"] = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    peak = bf16_peak_flops(dev[0])
    env["bf16_peak_flops"] = peak if peak is not None else "unknown"
    report.say(f"environment: {env['device_kind']} ×{env['device_count']} ({env['platform']}), jax {env['jax']}, "
               f"jaxlib {env['jaxlib']}, python {env['python']}, {env['cpu_count']} CPU cores")
    report.save()
    env.update(nvidia_smi())
    mem = env["device_memory_limit_bytes"]
    report.say(f"environment: driver {env.get('driver_version', '-')}, CUDA (driver) "
               f"{env.get('cuda_driver_version', '-')}, backend {env.get('backend_platform_version', '-')}, "
               f"allocator limit {_gb(mem)} GB, bf16 peak "
               + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown"))
    report.save()


# ------------------------------------------------------------------------------------------------ inference


def synthetic_weights(width: str):
    """AudioSRWeights of the preset `width` ("full": the release's shapes) with synthetic values (host numpy)."""
    from audiosr_jax.convert.core import convert_state_dict
    from audiosr_jax.lab.testing import synthetic_torch_checkpoint

    weights, _ = convert_state_dict(synthetic_torch_checkpoint(width), origin=f"synthetic-{width}")
    return weights


def window_inputs(weights, options, mesh, windows: int, samples: int, seed: int = 0):
    """(low-passed windows [windows, samples], Noise), placed on `mesh` as the batch engine places them."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from audiosr_jax import audio
    from audiosr_jax.inference.pipeline import (
        draw_noise,
        item_keys,
        latent_shape,
        num_sampler_steps,
    )

    x = (0.1 * np.random.default_rng(seed).standard_normal((windows, samples))).astype(np.float32)
    noise = draw_noise(item_keys(seed, range(windows), [0] * windows), latent_shape(samples // audio.HOP, weights),
                       num_sampler_steps(options, weights))
    noise = type(noise)(*(jax.device_put(a, NamedSharding(mesh, P(*([None] * (a.ndim - 4)), "data")))
                          for a in noise))
    return jax.device_put(x, NamedSharding(mesh, P("data"))), noise


def compile_windows(weights, options, params, x, noise):
    """`super_resolve_windows` (the engine's call: no STFT copy) compiled for these inputs; (executable, s)."""
    import jax

    from audiosr_jax.inference.pipeline import super_resolve_windows

    fn = jax.jit(lambda p, x, n: super_resolve_windows(weights, x, n, options, params=p, replace_low_band=False))
    t0 = time.perf_counter()
    compiled = fn.lower(params, x, noise).compile()
    return compiled, time.perf_counter() - t0


def program_memory(compiled) -> dict:
    """The compiled program's buffers in bytes (temp, argument, output, alias), {} where XLA gives none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without it
        return {}
    if m is None:
        return {}
    keys = ("temp", "argument", "output", "alias")
    return {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in keys}


def time_calls(fn, min_repeats: int = 1, max_repeats: int = 3, target_s: float = 4.0) -> tuple[float, float, object]:
    """(first call s, best later call s, last output) of `fn()`: one untimed-warm call, then repeats until
    `target_s` has passed (at least min_repeats, at most max_repeats)."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best, spent, n = math.inf, 0.0, 0
    while n < min_repeats or (n < max_repeats and spent + best < target_s):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return first, best, out


def run_inference_item(weights, item: InferenceItem, mesh, params, samples: int) -> dict:
    """Compile and time one (dtype, sampler, batch) on `mesh` with windows of `samples`; returns its figures."""
    import numpy as np

    from audiosr_jax.inference.pipeline import SamplingOptions

    options = SamplingOptions(steps=item.steps, guidance=3.5, eta=1.0, sampler=item.sampler, dtype=item.dtype)
    windows = item.batch * mesh.devices.size
    x, noise = window_inputs(weights, options, mesh, windows, samples)
    compiled, compile_s = compile_windows(weights, options, params, x, noise)
    first, best, y = time_calls(lambda: compiled(params, x, noise))
    return {"dtype": item.dtype, "sampler": item.sampler, "steps": item.steps, "batch_per_device": item.batch,
            "windows": windows, "window_s": samples / SAMPLE_RATE, "compile_s": compile_s, "first_call_s": first,
            "batch_s": best, "s_per_window": best / windows, "x_realtime": windows * samples / SAMPLE_RATE / best,
            "program_bytes": program_memory(compiled), "peak_bytes_in_use": peak_device_bytes(),
            "finite": bool(np.all(np.isfinite(np.asarray(y))))}


def _label(item: InferenceItem) -> str:
    return f"{item.dtype} {item.sampler}-{item.steps} batch {item.batch}/device"


def _say_inference(report: Report, label: str, r: dict) -> None:
    mem = r["program_bytes"]
    prog = sum(mem.get(k, 0) for k in ("temp", "argument", "output")) - mem.get("alias", 0) if mem else None
    report.say(f"inference {label}: {r['s_per_window']:.4f} s per {r['window_s']:.2f} s window, "
               f"{r['x_realtime']:.1f}× real time, "
               f"compile {r['compile_s']:.1f} s, batch {r['batch_s']:.3f} s ({r['windows']} windows), "
               f"program {_gb(prog)} GB, process peak {_gb(r['peak_bytes_in_use'])} GB"
               + ("" if r["finite"] else ", NON-FINITE output"))


def check_inference(report: Report, plan: Plan) -> None:
    """Section b: the sampling pipeline at the plan's width, each item guarded and within the time share."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from audiosr_jax.inference.batch import local_mesh

    sec = report.section("inference")
    sec.update(width=plan.width, window_s=plan.window_samples / SAMPLE_RATE, guidance=3.5, runs=[])
    t0 = time.perf_counter()
    weights = synthetic_weights(plan.width)
    sec["build_weights_s"] = time.perf_counter() - t0
    mesh = local_mesh()
    t0 = time.perf_counter()
    params = jax.block_until_ready(jax.device_put(weights.params, NamedSharding(mesh, P())))
    sec.update(mesh_devices=int(mesh.devices.size), put_weights_s=time.perf_counter() - t0,
               param_count=sum(int(a.size) for a in jax.tree.leaves(params)))
    report.say(f"inference: {plan.width} width, {sec['param_count'] / 1e6:.0f} M params built in "
               f"{sec['build_weights_s']:.1f} s, replicated on {sec['mesh_devices']} device(s) in "
               f"{sec['put_weights_s']:.1f} s")
    report.save()
    slowest = plan.min_item_s
    for item in plan.inference:
        label = _label(item)
        if not fits_in_time(report, f"inference {label}", slowest, plan.inference_share):
            continue
        t0 = time.perf_counter()
        with guarded(report, f"inference {label}"):
            r = run_inference_item(weights, item, mesh, params, plan.window_samples)
            sec["runs"].append(r)
            _say_inference(report, label, r)
            report.save()
        slowest = max(slowest, time.perf_counter() - t0)
        gc.collect()
    del params, weights
    gc.collect()
    jax.clear_caches()


# ------------------------------------------------------------------------------------------------- training


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is XLA running out of device memory (at compile or at run time)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))


def largest_that_fits(run, batches, on_oom=None):
    """Try run(batch) for `batches` (largest first) until one does not run out of memory.
    In: run(batch) -> result; on_oom(batch, exc) is told of each OOM. Out: (batch, result) or (None, None).
    Errors other than OOM propagate."""
    for b in batches:
        try:
            return b, run(b)
        except Exception as exc:  # noqa: BLE001 - sorted below
            if not is_out_of_memory(exc):
                raise
            if on_oom is not None:
                on_oom(b, exc)
        # out here, not in the except block: its traceback would keep the failed step's buffers alive
        _free_device_memory()
    return None, None


def _free_device_memory() -> None:
    import jax

    gc.collect()
    jax.clear_caches()


def train_figures(r: dict, peak: float | None) -> dict:
    """Adds tflops_per_s and mfu ("unknown" without a peak) to a bench_stage result."""
    if r.get("step_s") and r.get("flops_per_step"):
        r["tflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e12
        r["mfu"] = r["tflops_per_s"] * 1e12 / peak if peak else "unknown"
    return r


def _say_train(report: Report, r: dict) -> None:
    mfu = r.get("mfu")
    mfu_s = f"{100 * mfu:.1f} %" if isinstance(mfu, float) else str(mfu)
    m = r.get("memory") or {}
    tf = f"{r['tflops_per_s']:.3g}" if r.get("tflops_per_s") else "-"
    report.say(f"training {r['stage']} {r['width']} {r['dtype']} batch {r['batch']} × {r['crop_s']:.2f} s: "
               f"{r['step_s']:.4f} s/step, {r['examples_per_s']:.1f} examples/s, {tf} TFLOP/s, MFU {mfu_s}, "
               f"compile {r['compile_s']:.1f} s, temp {_gb(m.get('temp_bytes'))} GB, "
               f"process peak {_gb(r.get('peak_bytes_in_use'))} GB" + ("" if r.get("finite", True) else ", NON-FINITE"))


class TrainBench:
    """One stage's train step at a batch, through bench_train_stages.bench_stage, within the time budget.
    In: the report, the plan, the bf16 peak and (LDM) a frozen-VAE workdir. Calling it with a batch returns the
    figures (also recorded and printed); raises bench_stage's errors (OOM among them)."""

    def __init__(self, report: Report, plan: Plan, stage: str, peak: float | None, vae_from: str | None):
        self.report, self.plan, self.stage, self.peak, self.vae_from = report, plan, stage, peak, vae_from
        self.slowest = plan.min_item_s

    def __call__(self, batch: int) -> dict:
        from bench_train_stages import bench_stage

        what = f"training {self.stage} batch {batch}"
        if not fits_in_time(self.report, what, self.slowest):
            raise TimeoutError(what)
        t0 = time.perf_counter()
        try:
            r = bench_stage(self.stage, self.plan.width, batch=batch, dtype="bfloat16", steps=self.plan.train_steps,
                            warmup=0, full_steps=self.plan.train_steps, vae_from=self.vae_from,
                            overrides=self.plan.train_overrides.get(self.stage, ()))
        finally:
            self.slowest = max(self.slowest, time.perf_counter() - t0)
        r["peak_bytes_in_use"] = peak_device_bytes()
        train_figures(r, self.peak)
        self.report.section("training")["runs"].append(r)
        _say_train(self.report, r)
        self.report.save()
        return r


def frozen_vae_workdir(width: str, directory: str) -> str:
    """A random VAE workdir of the LDM preset's architecture (bench_train_stages' helper), written once."""
    from bench_train_stages import stage_config, write_random_vae_workdir

    return write_random_vae_workdir(stage_config("ldm", width, None, None, "bfloat16"), directory)


def train_stage(report: Report, plan: Plan, stage: str, peak: float | None, vae_from: str | None) -> None:
    """The stage's step at the largest of the plan's candidate batches that fits (an OOM costs a compile)."""
    bench = TrainBench(report, plan, stage, peak, vae_from)

    def on_oom(b, exc):
        report.say(f"training {stage} batch {b}: out of memory ({str(exc).strip().splitlines()[0][:120]})")
        report.section("training")["out_of_memory"].append({"stage": stage, "batch": b})

    try:
        largest_that_fits(bench, sorted(plan.train_batches[stage], reverse=True), on_oom)
    except TimeoutError:
        pass  # already reported as skipped


def check_training(report: Report, plan: Plan) -> None:
    """Section c: each stage's bf16 train step, LDM first, each stage guarded."""
    import jax

    sec = report.section("training")
    sec.update(width=plan.width, dtype="bfloat16", runs=[], out_of_memory=[], device=jax.devices()[0].device_kind)
    peak = bf16_peak_flops(jax.devices()[0])
    sec["bf16_peak_flops"] = peak if peak is not None else "unknown"
    with tempfile.TemporaryDirectory(prefix="device_check_vae_") as tmp:
        vae_from = None
        for stage in plan.train_stages:
            if not fits_in_time(report, f"training {stage}", plan.min_item_s):
                continue
            with guarded(report, f"training {stage}"):
                if stage == "ldm" and vae_from is None:
                    vae_from = frozen_vae_workdir(plan.width, os.path.join(tmp, "vae"))
                train_stage(report, plan, stage, peak, vae_from)
            _free_device_memory()


# ---------------------------------------------------------------------------------------------------- main


def _gb(x) -> str:
    return f"{x / 1e9:.2f}" if x else "-"


def default_out() -> str:
    """device_check.json in $OUT when set (the device tool's output folder), else in the working directory."""
    return os.path.join(os.environ.get("OUT") or os.getcwd(), "device_check.json")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny width, 2 sampler steps, 1 train step")
    p.add_argument("--out", default=None, help="JSON of all figures (default: $OUT/device_check.json or ./)")
    p.add_argument("--budget-s", type=float, default=400.0, help="skip what would not end within this (seconds)")
    p.add_argument("--sections", default="environment,inference,training", help="comma-separated subset")
    p.add_argument("--batches", action="append", default=[], metavar="STAGE=B1,B2,...",
                   help="training candidates for a stage instead of the plan's, e.g. ldm=64,48 (repeatable)")
    return p.parse_args(argv)


def with_batches(plan: Plan, assignments) -> Plan:
    """`plan` with the training candidates of `--batches STAGE=B1,B2` assignments replaced."""
    batches = dict(plan.train_batches)
    for a in assignments:
        stage, _, values = a.partition("=")
        if stage not in batches or not values:
            raise SystemExit(f"--batches {a!r}: expected STAGE=B1,B2,... with STAGE in {sorted(batches)}")
        batches[stage] = tuple(int(v) for v in values.split(","))
    return dataclasses.replace(plan, train_batches=batches)


def main(argv=None) -> int:
    """Run the sections in order; 0 when none failed, 1 otherwise (skips are not failures)."""
    args = parse_args(argv)
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
        # Its figures mean nothing: halve XLA's compile time (most of a dry run) at the cost of slower code.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DRY_RUN_XLA_FLAGS}".strip()
    plan = with_batches(DRY_RUN if args.dry_run else FULL, args.batches)
    report = Report(args.out or default_out(), args.budget_s, "dry-run" if args.dry_run else "full")
    report.say(f"device check ({report.data['mode']}, width {plan.width}, budget {args.budget_s:.0f} s) → "
               f"{report.path}")
    start_watchdog(report)
    sections = {"environment": check_environment, "inference": lambda r: check_inference(r, plan),
                "training": lambda r: check_training(r, plan)}
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        with guarded(report, name):
            sections[name](report)
    report.save()
    n_skip, n_err = len(report.data["skipped"]), len(report.data["errors"])
    report.say(f"done in {report.elapsed():.0f} s: {n_skip} skipped, {n_err} failed; JSON {report.path}")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
