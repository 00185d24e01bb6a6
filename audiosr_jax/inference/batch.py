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
A bad file never stops the run: it is reported with a one-line reason.

Multi-process (`run_shared`, what ``sample.py --multihost`` runs through `files.run_files`): every process
has the same job list and reads every file's header (`_probe`: channels and length, so the number of
windows); `inputs.share_windows` then gives each process one contiguous stretch of the (file, window) units
of about equal cost, so a long file is split by window over several processes. A file's owner is the
process holding its window 0: only the owner writes that output (and removes that output's stale partial
files, never another's: those may be another process's write in flight). Each process samples its windows
on its own local devices (a mesh over `jax.local_devices()`, weights restored by this process alone) with no
cross-process collective, so processes with different amounts of work never wait on each other until the
end. There, every process takes part (once each, even with no work or after a full disk stopped it) in
two exchanges over `_allgather_bytes`: a barrier of the distributed runtime (which waits as long as the
slowest process needs), then a jax all-gather of encoded bytes (which needs no shared filesystem):
(1) the windows computed for files owned elsewhere go to their owners, which assemble and write the files
(computing any window that did not arrive, e.g. where a file's header misled `_probe`); (2) every process's
results, so every process knows the whole run (its exit status) and process 0 writes the one report.
Since each window's noise depends only on (seed, channel, window), the outputs are bit-identical to a
one-process run on the same local mesh and batch size.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import itertools
import json
import logging
import os
import time
from collections import defaultdict, deque
from typing import Any, Self

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from audiosr_jax import audio
from audiosr_jax.diffusion import sampling
from audiosr_jax.errors import UserError
from audiosr_jax.inference import lowpass, postprocess, windows
from audiosr_jax.inference import progress as step_progress
from audiosr_jax.inference.checkpoint import AudioSRWeights
from audiosr_jax.inference.inputs import Job, share_windows
from audiosr_jax.inference.pipeline import (
    SamplingOptions,
    compute_params,
    draw_noise,
    item_keys,
    latent_shape,
    num_sampler_steps,
    super_resolve_windows,
    super_resolve_windows_low_memory,
)

__all__ = [
    "BatchConfig",
    "BatchStopped",
    "FileResult",
    "SharedRun",
    "local_mesh",
    "merge_previous_report",
    "remove_stale_partials",
    "run_arrays",
    "run_batch",
    "run_shared",
    "write_report",
]

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


@dataclasses.dataclass
class SharedRun:
    """What `run_shared` returns on every process. results: the whole run's, one per job in job order;
    stopped: why the run stopped early on some process ("" if it did not); windows: (channel, window) items
    sampled on this process; written: outputs this process wrote."""

    results: list[FileResult]
    stopped: str = ""
    windows: int = 0
    written: int = 0


@dataclasses.dataclass(frozen=True)
class _Item:
    """One unit of work: a file (``source`` its path, ``output`` where to write) or audio in memory
    (``source`` = (array [N] or [C, N], sample_rate), ``output`` None: the result is returned).
    ``windows``: sample only windows [start, stop) here (None: all); ``owned``: this process finishes it
    (else its windows are kept for the owner, `run_shared`)."""

    name: str  # the input's name in messages and the report
    source: Any
    output: str | None
    windows: tuple[int, int] | None = None
    owned: bool = True


@dataclasses.dataclass
class _File:
    job: _Item
    result: FileResult
    plan: windows.WindowPlan
    lowpassed: np.ndarray  # [C, num_windows, window]
    out: np.ndarray  # [C, num_windows, window + 16], filled as batches come back
    ready: np.ndarray  # [C, num_windows] bool: which items of `out` are filled
    loudness: float | None
    start: float
    remaining: int = 0  # items queued and not back yet


def local_mesh() -> Mesh:
    """A 1-D mesh ("data",) over this process's devices."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def remove_stale_partials(paths) -> None:
    """Remove what interrupted writes of `paths` left: `audio.atomic_write`'s hidden ".NAME.partial-*" files
    beside each path. Only these paths' own: another output's partial file may be a write in flight (another
    process of the job, or another run into the same folder)."""
    prefixes = defaultdict(set)  # folder → {".NAME.partial-"}
    for path in paths:
        if path:
            prefixes[os.path.dirname(os.path.abspath(path))].add("." + os.path.basename(path) + ".partial-")
    for folder, names in prefixes.items():
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(tuple(names)):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))


def _probe(path: str, cfg: BatchConfig) -> tuple[int, int]:
    """(windows, cost of one window) of a file from its header alone, to share work out before any file is
    read: the cost is channels × window length in 5.12 s segments. A file whose header cannot be read or
    used counts as one window of cost 1 (its owner reports why it fails). A header that misleads (the data
    turns out shorter) only costs balance: `run_shared` computes whatever did not arrive."""
    import soundfile as sf

    try:
        info = sf.info(path)
        n = (2 * info.frames * audio.SAMPLE_RATE + info.samplerate) // (2 * info.samplerate)  # soxr's length
        plan = windows.plan_windows(n, max_window=cfg.max_window_segments * audio.SEGMENT_SAMPLES)
    except (OSError, RuntimeError, ValueError, ZeroDivisionError):  # libsndfile's errors are RuntimeErrors
        return 1, 1
    return plan.num_windows, max(1, min(info.channels, cfg.max_channels)) * (plan.window // audio.SEGMENT_SAMPLES)


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
    return _File(job, result, plan, lowpassed, out, np.zeros(lowpassed.shape[:2], bool), loud, time.perf_counter())


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
    """Super-resolve every job (input file → output path) in this process. Returns one FileResult per job,
    in job order.

    Never raises for a bad input file: its result has status "failed" and a one-line reason. Raises
    BatchStopped (with every result) when the output location is full or read-only.
    """
    items = [_Item(j.input, j.input, j.output) for j in jobs]
    remove_stale_partials([j.output for j in jobs])
    results, _ = _run(weights, items, cfg, mesh, progress, unit="file")
    return results


def run_arrays(weights: AudioSRWeights, arrays: list[tuple[np.ndarray, int]], cfg: BatchConfig = BatchConfig(),
               mesh: Mesh | None = None, progress: bool = False) -> tuple[list[FileResult], list[np.ndarray | None]]:
    """The batch engine on audio in memory: `arrays` = [(audio [N] or [C, N], sample_rate Hz), ...].

    Returns (results, outputs): per input a FileResult and its 48 kHz output [C, n] float32 (None where it
    failed). Same windows, noise and maths as `run_batch` on the same audio written to a file."""
    items = [_Item(f"audio array {i}", (x, int(sr)), None) for i, (x, sr) in enumerate(arrays)]
    return _run(weights, items, cfg, mesh, progress, unit="array")


def _run(weights: AudioSRWeights, items: list[_Item], cfg: BatchConfig, mesh: Mesh | None, progress: bool,
         unit: str) -> tuple[list[FileResult], list[np.ndarray | None]]:
    """The engine behind `run_batch` and `run_arrays`: (results, in-memory outputs), in item order."""
    with _Engine(weights, items, cfg, mesh, progress, unit) as engine:
        try:
            engine.run_all()
        except BatchStopped as stop:
            engine.fail_pending(str(stop))
            raise BatchStopped(str(stop), engine.results) from None
    return engine.results, engine.outputs


def run_shared(weights: AudioSRWeights, jobs: list[Job], cfg: BatchConfig = BatchConfig(), mesh: Mesh | None = None,
               progress: bool = True) -> SharedRun:
    """`run_batch` for one process of a multi-process job (after `jax.distributed.initialize`): every process
    calls it with the same jobs and samples its share of their windows on its local devices (`mesh`, default
    all of them); see the module docstring. Each output is written once, by its file's owner.

    Returns, on every process, the whole run's results (bad files "failed" with a one-line reason, never
    raised) and `stopped`, set when some process found the output location full or read-only.
    """
    me = jax.process_index()
    probes = [_probe(j.input, cfg) for j in jobs]
    shares = share_windows([n for n, _ in probes], [c for _, c in probes], jax.process_count())
    owner = {s.index: s.process for s in shares if s.start == 0}
    mine = [s for s in shares if s.process == me]
    items = [_Item(jobs[s.index].input, jobs[s.index].input, jobs[s.index].output, (s.start, s.stop),
                   owner[s.index] == me) for s in mine]
    remove_stale_partials([item.output for item in items if item.owned])
    stopped = ""
    with _Engine(weights, items, cfg, mesh, progress, unit="file") as engine:
        try:
            engine.run_all()
        except BatchStopped as stop:
            stopped = str(stop)
        _exchange_windows(engine, [s.index for s in mine])  # every process, exactly once, whatever happened
        if not stopped:
            try:
                engine.complete_owned()
            except BatchStopped as stop:
                stopped = str(stop)
        if stopped:
            engine.fail_pending(stopped)
    owned = {s.index: engine.results[i] for i, s in enumerate(mine) if items[i].owned}
    results, stopped = _exchange_results(owned, stopped, len(jobs))
    return SharedRun(results, stopped, engine.counts["windows"], engine.written)


class _Engine:
    """The batch loop over one process's devices, for `items` (`_Item`).

    `start(i)` prepares item i (or marks it skipped/failed) and queues its (channel, window) items per window
    length; full batches run as soon as they fill, `drain()` runs the rest padded with silent dummies. When
    the last queued window of a file is back, the file is finished (written, or returned in `outputs`) if it
    is owned here and complete, else kept in `kept` for `run_shared`'s exchange. Use as a context manager
    (closes the progress bars)."""

    def __init__(self, weights: AudioSRWeights, items: list[_Item], cfg: BatchConfig, mesh: Mesh | None,
                 progress: bool, unit: str):
        from tqdm import tqdm

        self.weights, self.items, self.cfg = weights, items, cfg
        self.mesh = mesh or local_mesh()
        self.batch = cfg.batch_per_device * self.mesh.devices.size
        self.replicated = NamedSharding(self.mesh, P())
        # Lazy weights (load_weights(..., lazy=True), --low-memory) run stage by stage, one network in memory.
        self.params = (jax.device_put(compute_params(weights.params, cfg.options), self.replicated)
                       if weights.resident else None)
        self.steps = num_sampler_steps(cfg.options, weights)
        self.results = [FileResult(j.name, j.output or "", "pending") for j in items]
        self.outputs: list[np.ndarray | None] = [None] * len(items)
        self.kept: dict[int, _File] = {}
        self.queues: dict[int, deque] = defaultdict(deque)  # window length → (item, file, channel, window)
        self.counts = {"windows": 0, "batches": 0}  # shown beside the file count: sampler steps run so far
        self.written = 0
        self._ticked: set[int] = set()
        self._close = contextlib.ExitStack()
        self.steps_view = None
        if cfg.options.progress and items:  # a per-step bar (ticks from inside the sampler), else the files bar
            desc = items[0].name if len(items) == 1 else "sampling"
            self.steps_view = self._close.enter_context(step_progress.step_bar(desc=desc))
            progress = False
        self.calls = sampling.num_network_calls(cfg.options.sampler, cfg.options.steps,
                                                weights.diffusion.num_timesteps)
        self.bar = self._close.enter_context(tqdm(total=len(items), unit=unit, disable=not progress,
                                                  desc="audiosr-jax"))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self._close.close()

    def run_all(self) -> None:
        """Start every item, then drain the queues."""
        for i in range(len(self.items)):
            self.start(i)
        self.drain()

    def start(self, i: int) -> None:
        """Prepare item i and queue its windows; or mark it skipped (output exists) or failed (one-line reason)."""
        item, res = self.items[i], self.results[i]
        if item.output is not None and os.path.exists(item.output) and not self.cfg.overwrite:
            res.status, res.reason = "skipped", "output exists (use --overwrite to redo)"
            self._tick(i)
            return
        try:
            f = _prepare(item, self.cfg, res)
        except UserError as e:
            res.status, res.reason = "failed", str(e)
        except Exception as e:  # a batch job goes on past any one file; the reason is reported
            res.status, res.reason = "failed", f"{item.name}: unexpected error: {type(e).__name__}: {e}"
        if res.status == "failed":
            self._tick(i)
            return
        first, stop = item.windows or (0, f.plan.num_windows)
        self.queue(i, f, range(first, min(stop, f.plan.num_windows)))

    def queue(self, i: int, f: _File, wins) -> None:
        """Queue windows `wins` (every channel) of item i's file; with none to queue, it is done at once."""
        for c in range(f.out.shape[0]):
            for w in wins:
                self.queues[f.plan.window].append((i, f, c, w))
        f.remaining += f.out.shape[0] * len(wins)
        if f.remaining == 0:
            self._done(i, f)
        else:
            self.run(f.plan.window, force=False)

    def drain(self) -> None:
        """Run every queued item (the last batch of each length padded with dummies)."""
        for length in list(self.queues):
            self.run(length, force=True)

    def run(self, length: int, force: bool) -> None:
        """Run the full batches queued for windows of `length` samples (and a partial one when `force`)."""
        cfg, weights, q = self.cfg, self.weights, self.queues[length]
        while len(q) >= self.batch or (force and q):
            items = [q.popleft() for _ in range(min(self.batch, len(q)))]
            real = len(items)
            x = np.zeros((self.batch, length), np.float32)
            chans, wins = [], []
            for k, (_, f, c, w) in enumerate(items):
                x[k] = f.lowpassed[c, w]
                chans.append(c)
                wins.append(w)
            chans += [0] * (self.batch - real)  # dummies: silent input, output discarded
            wins += [0] * (self.batch - real)
            noise = draw_noise(item_keys(cfg.seed, chans, wins), latent_shape(length // audio.HOP, weights), self.steps)
            noise = type(noise)(*(jax.device_put(a, NamedSharding(self.mesh, P(*([None] * (a.ndim - 4)), "data")))
                                  for a in noise))
            x = jax.device_put(x, NamedSharding(self.mesh, P("data")))
            if self.steps_view is not None:
                self.steps_view.add(self.calls)
            if self.params is None:
                y = super_resolve_windows_low_memory(weights, x, noise, cfg.options, sharding=self.replicated,
                                                     replace_low_band=False)
            else:
                y = super_resolve_windows(weights, x, noise, cfg.options, params=self.params, replace_low_band=False)
            y = np.asarray(y)
            self.counts["windows"] += real
            self.counts["batches"] += 1
            self.bar.set_postfix(windows=self.counts["windows"], batches=self.counts["batches"],
                                 steps=self.counts["batches"] * self.steps, refresh=False)
            for k, (i, f, c, w) in enumerate(items):
                f.out[c, w] = y[k]
                f.ready[c, w] = True
                f.remaining -= 1
                if f.remaining == 0:
                    self._done(i, f)

    def _done(self, i: int, f: _File) -> None:
        """Every queued window of item i is back: finish its file if owned here and complete, else keep it."""
        f.result.seconds += time.perf_counter() - f.start
        if self.items[i].owned and f.ready.all():
            self.finish(i, f)
        else:
            self.kept[i] = f
        self._tick(i)

    def _tick(self, i: int) -> None:
        if i not in self._ticked:
            self._ticked.add(i)
            self.bar.update(1)

    def finish(self, i: int, f: _File) -> None:
        """Write (or keep in `outputs`) item i's file; a failure goes into its result. Raises BatchStopped when
        the output location is full or read-only."""
        start = time.perf_counter()
        try:
            self.outputs[i] = _finish(f, self.cfg)
            f.result.status = "ok"
            self.written += f.job.output is not None
        except OSError as e:
            f.result.status, f.result.reason = "failed", f"{f.job.output}: cannot write: {e.strerror or e}"
            if e.errno in _FATAL_WRITE_ERRNOS:
                raise BatchStopped(f"stopped: cannot write {f.job.output}: {e.strerror} (the output location is "
                                   "full or read-only); finished outputs are complete", []) from None
        except UserError as e:
            f.result.status, f.result.reason = "failed", str(e)
        except Exception as e:
            f.result.status, f.result.reason = "failed", f"{f.job.name}: unexpected error: {type(e).__name__}: {e}"
        f.result.seconds += time.perf_counter() - start

    def complete_owned(self) -> None:
        """After the window exchange: sample the windows still missing from the kept files owned here, then
        finish them."""
        for i, f in list(self.kept.items()):
            if self.items[i].owned:
                del self.kept[i]
                f.start = time.perf_counter()
                self.queue(i, f, [w for w in range(f.plan.num_windows) if not f.ready[:, w].all()])
        self.drain()

    def fail_pending(self, why: str) -> None:
        """Mark every item not finished as failed, naming `why` (the run stopped)."""
        for r in self.results:
            if r.status == "pending":
                r.status, r.reason = "failed", f"{r.input}: not processed: {why}"


def _exchange_windows(engine: _Engine, job_of: list[int]) -> None:
    """The first end-of-run exchange (a collective: every process calls it once). Sends the windows this
    process sampled for files owned elsewhere ("meta": job, plan, windows, seconds; arrays "JOB.W" [C,
    window + 16]) and fills the kept files owned here with what the others sampled for them. `job_of`: the
    job index of each of the engine's items. Windows sampled under another plan (a file that changed, or
    read otherwise) are ignored; the owner samples those itself."""
    meta, arrays = [], {}
    for i, f in engine.kept.items():
        if not engine.items[i].owned:
            done = [int(w) for w in np.flatnonzero(f.ready.all(axis=0))]
            meta.append({"job": job_of[i], "plan": [f.plan.n, f.plan.window, f.out.shape[0]], "windows": done,
                         "seconds": f.result.seconds})
            arrays.update({f"{job_of[i]}.{w}": f.out[:, w] for w in done})
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    owned = {job_of[i]: f for i, f in engine.kept.items() if engine.items[i].owned}
    for data in _allgather_bytes(buf.getvalue()):
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for m in json.loads(npz["meta"].tobytes()):
                f = owned.get(m["job"])
                if f is None or m["plan"] != [f.plan.n, f.plan.window, f.out.shape[0]]:
                    continue
                for w in m["windows"]:
                    f.out[:, w] = npz[f"{m['job']}.{w}"]
                    f.ready[:, w] = True
                f.result.seconds += m["seconds"]


def _exchange_results(owned: dict[int, FileResult], stopped: str, count: int) -> tuple[list[FileResult], str]:
    """The second end-of-run exchange (a collective): each job's result from its owner. In: this process's
    results by job index, why it stopped early ("" if it did not), the number of jobs. Out: the whole run's
    results in job order, and the first process's reason for stopping ("" if none stopped)."""
    data = json.dumps({"results": [[j, dataclasses.asdict(r)] for j, r in owned.items()], "stopped": stopped})
    results: list = [None] * count
    stops = []
    for payload in _allgather_bytes(data.encode()):
        part = json.loads(payload)
        for j, r in part["results"]:
            results[j] = FileResult(**r)
        stops += [part["stopped"]] if part["stopped"] else []
    return results, (stops[0] if stops else "")


_GATHER_CHUNK = 1 << 24  # bytes per all-gather round: each local device holds processes × this at once
# How long a process that is done waits at the end-of-run barrier for the others (a dead process is noticed
# sooner: the distributed runtime's heartbeats fail every process).
_BARRIER_TIMEOUT_MS = 7 * 24 * 3600 * 1000
_gathers = itertools.count()  # same sequence on every process: unique barrier names


def _allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's `data`, in process order. A collective over every device of the job: every process
    must call it the same number of times, in the same order. Needs no shared filesystem; rounds of at most
    `_GATHER_CHUNK` bytes bound the device memory it takes."""
    sizes = _gather_after_barrier(np.frombuffer(len(data).to_bytes(8, "little"), np.uint8))
    sizes = [int.from_bytes(row.tobytes(), "little") for row in sizes]
    chunk = max(1, min(_GATHER_CHUNK, max(sizes)))
    mine = np.frombuffer(data, np.uint8)
    parts = [bytearray() for _ in sizes]
    for offset in range(0, max(sizes), chunk):
        piece = np.zeros(chunk, np.uint8)
        here = mine[offset:offset + chunk]
        piece[:here.size] = here
        gathered = _gather_after_barrier(piece)  # [processes, chunk]
        for p, size in enumerate(sizes):
            parts[p] += gathered[p, :max(0, min(chunk, size - offset))].tobytes()
    return [bytes(p) for p in parts]


def _gather_after_barrier(x: np.ndarray) -> np.ndarray:
    """`multihost_utils.process_allgather(x)` ([processes, *x.shape]) once every process has reached it.
    The wait is a barrier of the distributed runtime's coordination service: a device collective cannot
    wait long (gloo gives up setting one up after 30 s) and processes arrive at the end of a run minutes or
    hours apart."""
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    ocp.multihost.get_barrier_sync_fn()(key=f"audiosr-jax/gather-{next(_gathers)}", timeout_ms=_BARRIER_TIMEOUT_MS)
    return multihost_utils.process_allgather(x)


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
