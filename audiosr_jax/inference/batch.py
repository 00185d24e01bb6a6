"""Batch inference: many files of any length and channel count, windows batched over every local device.

Flow (host ↔ device):
  file → load, resample, normalise (host) → per channel: cutoff detection and low-pass over the whole
  channel (host, scipy) → fixed-length windows (`windows.plan_windows`: 5.12 s or 10.24 s, longer audio
  in overlapping 10.24 s windows) → work items (file, channel, window) queued per window length →
  full batches of `batch_size` items, padded with silent dummies so every batch of a length has one shape →
  `pipeline.super_resolve_windows` (one XLA program per length, batch sharded over a Mesh of all local
  devices, params replicated) → outputs scattered back to their files → STFT low-band copy with one energy
  ratio per channel → cross-fade (`windows.overlap_add`), normalise, cut to the input's length, written
  atomically (temp file + rename).

Each item's noise comes from (seed, channel, window), so a file's output does not depend on its batch
neighbours and equals the one-file path (`pipeline.super_resolve_waveform`) for files of one window.
A bad file never stops the run: it is reported with a one-line reason. Multi-host: each process takes its
round-robin share of the file list (`inputs.shard_for_host`) and runs on its own local devices.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import logging
import os
import time
from collections import defaultdict, deque
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from audiosr_jax import audio
from audiosr_jax.inference import lowpass, postprocess, windows
from audiosr_jax.inference.checkpoint import AudioSRWeights
from audiosr_jax.diffusion import sampling
from audiosr_jax.errors import UserError
from audiosr_jax.inference import progress as step_progress
from audiosr_jax.inference.inputs import Job
from audiosr_jax.inference.pipeline import (SamplingOptions, draw_noise, item_keys, latent_shape, num_sampler_steps,
                                  super_resolve_windows, super_resolve_windows_low_memory)

__all__ = ["BatchConfig", "FileResult", "BatchStopped", "run_batch", "run_arrays", "write_report",
           "merge_previous_report", "local_mesh"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    options: SamplingOptions = SamplingOptions()
    seed: int = 42
    batch_per_device: int = 1
    max_channels: int = 2
    max_window_segments: int = 2  # windows of at most 2 × 5.12 s, the training crop length
    overwrite: bool = False
    match_loudness: bool = False
    lowpass: str = "official"  # the condition's filter family: the official tool's draw for `seed`, or a name


@dataclasses.dataclass
class FileResult:
    input: str
    output: str
    status: str  # "ok", "failed", "skipped"
    reason: str = ""
    duration_s: float = 0.0
    channels: int = 0
    sample_rate: int = 0
    windows: int = 0
    cutoff_hz: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    note: str = ""  # a warning that did not stop the file (e.g. truncated data)


# errors of the output location, not of one file: going on would fail every file after the compute
_FATAL_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class BatchStopped(UserError):
    """The run stopped early because the output location cannot take more (disk full, quota, read-only).
    ``results``: every job's FileResult; those not finished are "failed" with the reason."""

    def __init__(self, message: str, results: list[FileResult]):
        super().__init__(message)
        self.results = results


@dataclasses.dataclass(frozen=True)
class _Item:
    """One unit of work: a file (``source`` its path, ``output`` where to write) or audio in memory
    (``source`` = (array [N] or [C, N], sample_rate), ``output`` None: the result is returned)."""

    name: str  # the input's name in messages and the report
    source: Any
    output: str | None


@dataclasses.dataclass
class _File:
    job: _Item
    result: FileResult
    plan: windows.WindowPlan
    lowpassed: np.ndarray  # [C, num_windows, window]
    out: np.ndarray  # [C, num_windows, window + 16], filled as batches come back
    loudness: float | None
    remaining: int
    start: float


def local_mesh() -> Mesh:
    """A 1-D mesh ("data",) over this process's devices."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def _remove_stale_partials(folder: str) -> None:
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".") and ".partial-" in name:
                os.remove(os.path.join(folder, name))


def _loudness(x: np.ndarray, sr: int) -> float | None:
    import pyloudnorm

    try:
        value = pyloudnorm.Meter(sr).integrated_loudness(x.T)
    except ValueError:  # shorter than one 400 ms gating block
        return None
    return float(value) if np.isfinite(value) else None


def _prepare(job: _Item, cfg: BatchConfig, result: FileResult) -> _File:
    wave, info = audio.prepare_waveform(job.source, max_channels=cfg.max_channels)  # [C, N] normalised, padded
    n = int(info["samples"])
    loud = None
    if cfg.match_loudness:
        if isinstance(job.source, tuple):
            raw, sr = audio.check_audio(job.source[0], job.source[1], job.name, cfg.max_channels), job.source[1]
        else:
            raw, sr = audio.load_audio(job.source, max_channels=cfg.max_channels)
        loud = _loudness(raw, sr)
    plan = windows.plan_windows(n, max_window=cfg.max_window_segments * audio.SEGMENT_SAMPLES)
    cover = plan.starts[-1] + plan.window
    wave = wave[:, :cover] if wave.shape[1] >= cover else np.pad(wave, ((0, 0), (0, cover - wave.shape[1])))
    lp, cutoffs = [], []
    for ch in wave:
        x, cutoff = lowpass.prepare_lowpass(ch, ftype=lowpass.filter_type(cfg.lowpass, cfg.seed))
        lp.append(x)
        cutoffs.append(float(cutoff))
    lowpassed = windows.cut_windows(np.stack(lp).astype(np.float32), plan)
    result.duration_s, result.channels, result.sample_rate = n / audio.SAMPLE_RATE, wave.shape[0], int(info["orig_sr"])
    result.windows, result.cutoff_hz = len(plan.starts), cutoffs
    result.note = "" if isinstance(job.source, tuple) else audio.truncation_note(job.source)
    out = np.zeros((*lowpassed.shape[:2], plan.window + 16), np.float32)
    return _File(job, result, plan, lowpassed, out, loud, lowpassed.shape[0] * lowpassed.shape[1], time.perf_counter())


def _replace_low_band(f: _File) -> None:
    """The reference's STFT-domain low-band copy, window by window, with ONE energy ratio per channel (pooled
    over its windows), so neighbouring windows of long audio get the same low-band gain. For a file of one
    window this is exactly the per-item ratio of the one-file path."""
    for c in range(f.out.shape[0]):
        rows = [postprocess.low_band_energy(f.out[c, w][None], f.lowpassed[c, w][None]) for w in range(f.out.shape[1])]
        ratio = postprocess.energy_ratio(sum(r[0] for r in rows), sum(r[1] for r in rows))
        for w in range(f.out.shape[1]):
            f.out[c, w] = np.asarray(postprocess.replace_low_stft(f.out[c, w][None], f.lowpassed[c, w][None], ratio))[0]


def _finish(f: _File, cfg: BatchConfig) -> np.ndarray | None:
    """The file's output [C, n] at 48 kHz: written to its output path (returns None), or returned."""
    n = int(round(f.result.duration_s * audio.SAMPLE_RATE))
    _replace_low_band(f)
    if len(f.plan.starts) == 1:
        y = f.out[:, 0]  # [C, window + 16]: normalised over the whole window, as the one-file path does
    else:
        y = windows.overlap_add(f.out[..., : f.plan.window], f.plan)
    y = np.asarray(postprocess.normalize_output(jnp.asarray(y)))[:, :n]
    if not np.all(np.isfinite(y)):
        raise UserError(f"{f.job.name}: the model produced non-finite samples (NaN/inf); nothing written")
    if f.loudness is not None:
        now = _loudness(y, audio.SAMPLE_RATE)
        if now is not None:
            y = y * 10 ** ((f.loudness - now) / 20)
            peak = np.max(np.abs(y))
            if peak > 0.999:  # keep it writable without clipping
                y = y * (0.999 / peak)
    if f.job.output is None:
        return y.astype(np.float32)
    audio.write_audio(f.job.output, y, audio.SAMPLE_RATE)
    return None


def run_batch(weights: AudioSRWeights, jobs: list[Job], cfg: BatchConfig = BatchConfig(), mesh: Mesh | None = None,
              progress: bool = True) -> list[FileResult]:
    """Super-resolve every job (input file → output path). Returns one FileResult per job, in job order.

    Never raises for a bad input file: its result has status "failed" and a one-line reason. Raises
    BatchStopped (with every result) when the output location is full or read-only.
    """
    items = [_Item(j.input, j.input, j.output) for j in jobs]
    for folder in {os.path.dirname(os.path.abspath(j.output)) for j in jobs}:
        _remove_stale_partials(folder)
    results, _ = _run(weights, items, cfg, mesh, progress, unit="file")
    return results


def run_arrays(weights: AudioSRWeights, arrays: list[tuple[np.ndarray, int]], cfg: BatchConfig = BatchConfig(),
               mesh: Mesh | None = None, progress: bool = False) -> tuple[list[FileResult], list[np.ndarray | None]]:
    """The batch engine on audio in memory: `arrays` = [(audio [N] or [C, N], sample_rate Hz), ...].

    Returns (results, outputs): per input a FileResult and its 48 kHz output [C, n] float32 (None where it
    failed). Same windows, noise and maths as `run_batch` on the same audio written to a file."""
    items = [_Item(f"audio array {i}", (x, int(sr)), None) for i, (x, sr) in enumerate(arrays)]
    return _run(weights, items, cfg, mesh, progress, unit="array")


def _run(weights: AudioSRWeights, jobs: list[_Item], cfg: BatchConfig, mesh: Mesh | None, progress: bool,
         unit: str) -> tuple[list[FileResult], list[np.ndarray | None]]:
    """The engine behind `run_batch` and `run_arrays`: (results, in-memory outputs), in item order."""
    from tqdm import tqdm

    mesh = mesh or local_mesh()
    devices = mesh.devices.size
    batch = cfg.batch_per_device * devices
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    # Lazy weights (load_weights(..., lazy=True), --low-memory) run stage by stage, one network in memory.
    params = jax.device_put(weights.params, replicated) if weights.resident else None
    steps = num_sampler_steps(cfg.options, weights)
    results = [FileResult(j.name, j.output or "", "pending") for j in jobs]
    outputs: list[np.ndarray | None] = [None] * len(jobs)
    queues: dict[int, deque] = defaultdict(deque)  # window length → (file, channel, window) items
    files: dict[int, _File] = {}

    # a per-step bar (ticks from inside the sampler) when asked for, else the files bar
    step_bar = contextlib.ExitStack()
    steps_view = None
    if cfg.options.progress:
        steps_view = step_bar.enter_context(step_progress.step_bar(desc=jobs[0].name if len(jobs) == 1 else "sampling"))
        progress = False
    calls = sampling.num_network_calls(cfg.options.sampler, cfg.options.steps, weights.diffusion.num_timesteps)
    bar = tqdm(total=len(jobs), unit=unit, disable=not progress, desc="audiosr-jax")
    counts = {"windows": 0, "batches": 0}  # shown beside the file count: sampler steps run so far

    def finish(i: int, f: _File):
        try:
            outputs[i] = _finish(f, cfg)
            f.result.status = "ok"
        except OSError as e:
            f.result.status, f.result.reason = "failed", f"{f.job.output}: cannot write: {e.strerror or e}"
            if e.errno in _FATAL_WRITE_ERRNOS:
                raise BatchStopped(f"stopped: cannot write {f.job.output}: {e.strerror} (the output location is "
                                   "full or read-only); finished outputs are complete", []) from None
        except UserError as e:
            f.result.status, f.result.reason = "failed", str(e)
        except Exception as e:
            f.result.status, f.result.reason = "failed", f"{f.job.name}: unexpected error: {type(e).__name__}: {e}"
        f.result.seconds += time.perf_counter() - f.start
        files.pop(i, None)
        bar.update(1)

    def run(length: int, force: bool):
        q = queues[length]
        while len(q) >= batch or (force and q):
            items = [q.popleft() for _ in range(min(batch, len(q)))]
            real = len(items)
            x = np.zeros((batch, length), np.float32)
            chans, wins = [], []
            for i, (_, f, c, w) in enumerate(items):
                x[i] = f.lowpassed[c, w]
                chans.append(c)
                wins.append(w)
            chans += [0] * (batch - real)  # dummies: silent input, output discarded
            wins += [0] * (batch - real)
            noise = draw_noise(item_keys(cfg.seed, chans, wins), latent_shape(length // audio.HOP, weights), steps)
            noise = type(noise)(*(jax.device_put(a, NamedSharding(mesh, P(*([None] * (a.ndim - 4)), "data")))
                                  for a in noise))
            x = jax.device_put(x, data_sharding)
            if steps_view is not None:
                steps_view.add(calls)
            if params is None:
                y = super_resolve_windows_low_memory(weights, x, noise, cfg.options, sharding=replicated,
                                                     replace_low_band=False)
            else:
                y = super_resolve_windows(weights, x, noise, cfg.options, params=params, replace_low_band=False)
            y = np.asarray(y)
            counts["windows"] += real
            counts["batches"] += 1
            bar.set_postfix(windows=counts["windows"], batches=counts["batches"], steps=counts["batches"] * steps,
                            refresh=False)
            for i, (index, f, c, w) in enumerate(items):
                f.out[c, w] = y[i]
                f.remaining -= 1
                if f.remaining == 0:
                    finish(index, f)

    try:
        for index, job in enumerate(jobs):
            res = results[index]
            if job.output is not None and os.path.exists(job.output) and not cfg.overwrite:
                res.status, res.reason = "skipped", "output exists (use --overwrite to redo)"
                bar.update(1)
                continue
            try:
                f = _prepare(job, cfg, res)
            except UserError as e:
                res.status, res.reason = "failed", str(e)
            except Exception as e:  # a batch job goes on past any one file; the reason is reported
                res.status, res.reason = "failed", f"{job.name}: unexpected error: {type(e).__name__}: {e}"
            if res.status == "failed":
                bar.update(1)
                continue
            files[index] = f
            for c in range(f.lowpassed.shape[0]):
                for w in range(f.lowpassed.shape[1]):
                    queues[f.plan.window].append((index, f, c, w))
            run(f.plan.window, force=False)
        for length in list(queues):
            run(length, force=True)
    except BatchStopped as stop:
        for r in results:
            if r.status == "pending":
                r.status, r.reason = "failed", f"{r.input}: not processed: {stop}"
        raise BatchStopped(str(stop), results) from None
    finally:
        bar.close()
        step_bar.close()
    return results, outputs


def write_report(results: list[FileResult], path: str) -> None:
    """JSON (path ending .json) or CSV report, one entry per file, written atomically."""
    rows = [dataclasses.asdict(r) for r in results]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            if path.endswith(".csv"):
                writer = csv.DictWriter(fh, fieldnames=[f.name for f in dataclasses.fields(FileResult)])
                writer.writeheader()
                for r in rows:
                    writer.writerow({**r, "cutoff_hz": ";".join(f"{c:.0f}" for c in r["cutoff_hz"])})
            else:
                json.dump(rows, fh, indent=1)

    audio.atomic_write(path, write)


def read_report(path: str) -> list[FileResult]:
    """The entries of a report written by `write_report` ([] when there is none or it cannot be read)."""
    fields = {f.name: f.type for f in dataclasses.fields(FileResult)}
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh)) if path.endswith(".csv") else json.load(fh)
        out = []
        for row in rows:
            row = {k: v for k, v in row.items() if k in fields}
            if isinstance(row.get("cutoff_hz"), str):
                row["cutoff_hz"] = [float(c) for c in row["cutoff_hz"].split(";") if c]
            for k in ("duration_s", "seconds"):
                row[k] = float(row.get(k) or 0.0)
            for k in ("channels", "sample_rate", "windows"):
                row[k] = int(row.get(k) or 0)
            out.append(FileResult(**row))
        return out
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def merge_previous_report(results: list[FileResult], path: str) -> list[FileResult]:
    """This run's results with what an earlier report at `path` knew: a file skipped now because an earlier
    run wrote it keeps that run's entry (duration, cutoffs, windows, seconds) with status "skipped"; entries
    for files this run did not see are kept after this run's."""
    previous = {r.input: r for r in read_report(path)}
    merged = []
    for r in results:
        old = previous.pop(r.input, None)
        if r.status == "skipped" and old is not None and old.status in ("ok", "skipped") and old.output == r.output:
            r = dataclasses.replace(old, status="skipped", reason=r.reason)
        merged.append(r)
    return merged + list(previous.values())
