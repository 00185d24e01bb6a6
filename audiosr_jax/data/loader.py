"""The training data loader: random crops + random low-pass pairs, batched into globally sharded jax.Arrays.

Pipeline (grain's dataset API; every step is a pure function of the element's position, so the stream is
deterministic, resumable and the same for any number of worker processes)::

    MapDataset.range(n)                      record indices of the source
      .shuffle(seed)                         a fresh permutation per epoch (grain folds the epoch into the seed)
      .repeat(num_epochs)                    None = forever
                                             (the stream: position p -> record index)
    MapDataset.range(local positions)        this host's share: only its records are ever read
      .map(_HostShare)                       local position -> (stream position, record index)
      .map(_Example)                         epoch p // n; crop + low-pass drawn from
                                             default_rng([seed, epoch, index, ...]) (reads source[index])
      .to_iter_dataset(ReadOptions)          threads in-process
      .mp_prefetch(num_workers)              optional worker processes (element order unchanged)
      .batch(global // process_count)        numpy dict per host
    -> jax.make_array_from_process_local_data(NamedSharding(mesh, P(batch_axes)), local)

* **Global batches are process-count independent, row for row**: global batch ``s`` holds the stream
  positions ``[s·B, (s+1)·B)`` in order, row ``r`` at position ``s·B + r``; each host reads exactly the rows
  its devices hold in the batch sharding (host ``i`` of ``n``: rows ``[i·B/n, (i+1)·B/n)`` on the usual
  meshes, every n-th row where the mesh interleaves processes), so every device sees the same examples in the
  same place whatever the number of processes. The random draws
  depend on ``(seed, epoch, record index)`` only (:func:`audiosr_jax.degrade.draw_spec` for the low-pass),
  so an example is processed identically on any host, in any order, after any restart.
* **Epoch end**: with ``num_epochs = E`` the stream has ``E·len(source)`` positions and the loader yields
  ``floor(E·len(source) / global_batch_size)`` batches (the last partial global batch is dropped, so every
  host runs the same number of steps); batches may straddle an epoch boundary when ``E > 1``.
* **Resume**: the iterator state (JSON: the position of the next element, and the workers' positions
  when ``worker_count > 0``) is saved in the model's orbax step through :meth:`Loader.checkpoint_args`
  and restored by :meth:`Loader.restore_args`; the next batch after a restore equals the uninterrupted
  run's. A state restores only into a loader with the same config and worker count (and process count).

Why grain and not tf.data (measured, docs/design.md §Data pipeline, 2 cores, no TF): reading the TFDS
ArrayRecord source with random crops, batch 4, in-process, grain gave 1342–1539 clips/s vs tf.data 918–1022
clips/s (~1.5x), and tf.data needs TensorFlow (1.4 GB install, 4.3 s import in every process that touches it,
including loader workers), which is not a dependency; ``builder.as_dataset()`` cannot even read ArrayRecord.
grain also gives per-host sharding, index-based deterministic randomness and a checkpointable iterator state
that orbax saves in the same step as the model.

Crops: ``crop_samples`` from a segment of ``N`` samples with ``V = valid_samples`` real (non-padding)
samples: the offset is uniform over the positions where the crop holds at least
``min(V, ceil(min_valid_fraction · crop_samples))`` valid samples, i.e. entirely inside the valid part
when ``min_valid_fraction = 1`` and ``V >= crop_samples``, and at offset 0 when the segment has fewer valid
samples than that.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from audiosr_jax import degrade as D

LOWPASS_MODES = ("host", "device", "device_stft", "none")
_CROP_TAG = 1  # distinguishes the crop's random stream from draw_spec's default_rng([seed, epoch, index])


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """What the loader yields (plain fields, ml_collections / JSON friendly).

    ``global_batch_size``: examples per step over all hosts. ``crop_samples``: crop length at 48 kHz
    (<= the segment length). ``num_epochs``: None repeats forever. ``worker_count``: grain worker processes
    (0 = in-process threads only). ``lowpass``: "host" (scipy chain in the loader: key ``lowpass``),
    "device" (filter parameters only, key ``lowpass_params``, for ``degrade.degrade_on_device`` in the
    step), "device_stft" (the same ``lowpass_params``; the LDM step applies the gain to the target's STFT,
    ``degrade.log_mels_with_condition``) or "none". ``degrade``: ``DegradeConfig.to_dict()``. ``min_valid_fraction``: see the module doc.
    ``read_threads`` / ``prefetch_buffer``: grain's in-process ReadOptions (threads mapping elements, and
    how many elements they may run ahead); ``worker_buffer``: elements buffered per worker process.
    """

    global_batch_size: int
    crop_samples: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    worker_count: int = 0
    lowpass: str = "host"
    degrade: dict = dataclasses.field(default_factory=lambda: D.DegradeConfig().to_dict())
    min_valid_fraction: float = 0.5
    read_threads: int = 2
    prefetch_buffer: int = 64
    worker_buffer: int = 16

    def __post_init__(self):
        if self.lowpass not in LOWPASS_MODES:
            raise ValueError(f"lowpass must be one of {LOWPASS_MODES}, got {self.lowpass!r}")
        if self.global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {self.global_batch_size}")
        if self.crop_samples < 1:
            raise ValueError(f"crop_samples must be >= 1, got {self.crop_samples}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must be in [0, 1], got {self.min_valid_fraction}")
        if self.worker_count < 0:
            raise ValueError(f"worker_count must be >= 0, got {self.worker_count}")
        D.DegradeConfig.from_dict(dict(self.degrade))  # validate early

    def degrade_config(self) -> D.DegradeConfig:
        return D.DegradeConfig.from_dict(dict(self.degrade))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["degrade"] = self.degrade_config().to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LoaderConfig:
        return cls(**d)


def crop_offset(rng: np.random.Generator, segment: int, valid: int, crop: int, min_valid_fraction: float) -> int:
    """Random crop start in ``[0, segment - crop]`` keeping >= ``min(valid, ceil(f·crop))`` valid samples."""
    need = min(valid, math.ceil(min_valid_fraction * crop))
    hi = min(segment - crop, max(valid - need, 0))
    return int(rng.integers(0, hi + 1))


@functools.lru_cache(maxsize=1 << 16)
def device_params(spec: D.LowpassSpec, sr: int) -> dict:
    """One example's ``lowpass_params`` (read-only numpy: sos [5, 6], fc, t_win, fs_down) for the on-device
    low-pass of ``spec`` at ``sr`` Hz; cached (a spec repeats)."""
    # the filter design (~1-3 ms) dominates the device path's host cost; a spec repeats often when
    # DegradeConfig.cutoff_step_hz > 1 (5 families x 9 orders x 281 cutoffs at 50 Hz), rarely at 1 Hz
    out = {k: v[0] for k, v in D.response_params([spec], sr).items()}
    for v in out.values():
        if isinstance(v, np.ndarray):  # scalars are immutable already
            v.flags.writeable = False
    return out


class _HostShare:
    """Map a host-local position q -> (stream position, record index): local batch s = q // L holds the
    stream positions ``s·B + rows[j]`` of global batch s, ``rows`` being the L global rows this host's devices
    hold, ascending (B = global batch size). Picklable for grain workers."""

    def __init__(self, stream: grain.MapDataset, global_batch: int, rows: Sequence[int]):
        self.stream, self.global_batch, self.rows = stream, global_batch, tuple(int(r) for r in rows)

    def __call__(self, q: int) -> tuple[int, int]:
        s, j = divmod(int(q), len(self.rows))
        position = s * self.global_batch + self.rows[j]
        return position, int(self.stream[position])


class _Example:
    """Map (stream position, record index) -> one training example (numpy). Picklable for grain workers."""

    def __init__(self, source: Any, cfg: LoaderConfig, n_records: int):
        self.source = source
        self.cfg = cfg
        self.dcfg = cfg.degrade_config()
        self.n_records = n_records

    def __call__(self, item: tuple[int, int]) -> dict:
        cfg, dcfg = self.cfg, self.dcfg
        position, index = item
        epoch = int(position) // self.n_records
        index = int(index)
        rec = self.source[index]
        audio = np.asarray(rec["audio"])
        n, c = audio.shape[-1], cfg.crop_samples
        if audio.ndim != 1 or n < c:
            raise ValueError(f"record {index}: audio shape {audio.shape} is shorter than crop_samples {c} (or not 1-D)")
        valid = int(rec.get("valid_samples", n))
        rng = np.random.default_rng([cfg.seed, epoch, index, _CROP_TAG])
        off = crop_offset(rng, n, valid, c, cfg.min_valid_fraction)
        x = audio[off : off + c].astype(np.float32) * np.float32(1.0 / 32768.0)
        out = {"audio": x, "index": np.int32(index), "epoch": np.int32(epoch)}
        if cfg.lowpass == "host":
            low, spec = D.make_pair(x, dcfg, cfg.seed, epoch, index)
            out["lowpass"] = low
        elif cfg.lowpass in ("device", "device_stft"):  # the same batch; they differ in the step only
            spec = D.draw_spec(dcfg, cfg.seed, epoch, index)
            out["lowpass_params"] = device_params(spec, dcfg.sample_rate)
        else:
            spec = None
        out["cutoff_hz"] = np.float32(dcfg.sample_rate / 2 if spec is None else spec.cutoff_hz)
        if "bandwidth_hz" in rec:  # the clip's measured content bandwidth (data/cutting.py): the LDM's loss mask
            out["bandwidth_hz"] = np.float32(rec["bandwidth_hz"])
        return out


def _host_rows(sharding: NamedSharding, global_batch: int, local_batch: int) -> list[int]:
    """The global rows of a batch that this process's devices hold, ascending: the order in which
    ``jax.make_array_from_process_local_data`` takes a process's local rows. On the usual meshes one block
    ``[i·L, (i+1)·L)``; a mesh whose batch axes interleave processes gives every n-th row."""
    rows = sorted({r for sl in sharding.addressable_devices_indices_map((global_batch,)).values()
                   for r in range(global_batch)[sl[0]]})
    if len(rows) != local_batch:
        raise ValueError(f"this process's devices hold {len(rows)} rows of a global batch of {global_batch}, "
                         f"expected {local_batch} (global batch / processes)")
    return rows


def _batch_axes_size(mesh: Mesh, batch_axes: Sequence[str]) -> int:
    for a in batch_axes:
        if a not in mesh.shape:
            raise ValueError(f"batch axis {a!r} is not a mesh axis {tuple(mesh.shape)}")
    return math.prod(mesh.shape[a] for a in batch_axes)


class Loader:
    """Iterator of global batches (see :func:`make_loader`). ``next(loader)`` -> dict of global jax.Arrays:

    * ``audio`` float32 [B, crop] in [-1, 1); ``lowpass`` float32 [B, crop] (lowpass="host");
    * ``lowpass_params`` {sos [B, 5, 6], fc [B], t_win [B], fs_down [B]} (lowpass="device" or "device_stft");
    * ``cutoff_hz`` float32 [B] (sr/2 for lowpass="none"); ``index`` int32 [B] (record index);
      ``epoch`` int32 [B]; ``bandwidth_hz`` float32 [B] where the source's records carry it.

    All leaves are sharded ``P(batch_axes)`` on the leading (batch) dim.
    """

    def __init__(self, source: Any, cfg: LoaderConfig, mesh: Mesh, batch_axes: Sequence[str] = ("data",), *,
                 process_index: int | None = None, process_count: int | None = None):
        self.cfg = cfg
        self.mesh = mesh
        self.batch_axes = tuple(batch_axes)
        pi = jax.process_index() if process_index is None else int(process_index)
        pc = jax.process_count() if process_count is None else int(process_count)
        if not 0 <= pi < pc:
            raise ValueError(f"process_index {pi} not in [0, process_count {pc})")
        self.process_index, self.process_count = pi, pc
        self._simulated = pc != jax.process_count()
        g = cfg.global_batch_size
        n_dev = _batch_axes_size(mesh, self.batch_axes)
        if g % n_dev:
            raise ValueError(f"global_batch_size {g} does not divide over the {n_dev} devices of batch axes {self.batch_axes}")
        if g % pc:
            raise ValueError(f"global_batch_size {g} does not divide over the {pc} processes")
        self.local_batch_size = g // pc
        n = len(source)
        if n == 0:
            raise ValueError("the data source is empty (0 records)")
        seg = np.asarray(source[0]["audio"]).shape[-1]
        if cfg.crop_samples > seg:
            raise ValueError(f"crop_samples {cfg.crop_samples} is longer than the dataset's segments ({seg} samples)")
        self.num_records = n
        self.segment_samples = seg
        spec = P(self.batch_axes if len(self.batch_axes) > 1 else self.batch_axes[0])
        self.sharding = NamedSharding(mesh, spec)

        stream = grain.MapDataset.range(n)
        if cfg.shuffle:
            stream = stream.shuffle(seed=cfg.seed)
        stream = stream.repeat(cfg.num_epochs)
        if cfg.num_epochs is not None:
            self.num_batches = (cfg.num_epochs * n) // g
            if self.num_batches == 0:
                raise ValueError(f"{cfg.num_epochs} epoch(s) of {n} records make no global batch of {g}")
        else:
            self.num_batches = None
        # whole global batches only, so every host runs the same steps
        whole = self.num_batches if self.num_batches is not None else len(stream) // g
        rows = (range(pi * self.local_batch_size, (pi + 1) * self.local_batch_size) if self._simulated
                else _host_rows(self.sharding, g, self.local_batch_size))
        ds = grain.MapDataset.range(whole * self.local_batch_size)
        ds = ds.map(_HostShare(stream, g, rows)).map(_Example(source, cfg, n))
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_buffer))
        if cfg.worker_count > 0:
            # grain reads absl flags when it starts workers; a program without absl.app has not parsed them
            from absl import flags

            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            # before batching: workers take elements round-robin, so the stream is the in-process one
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count,
                                                             per_worker_buffer_size=cfg.worker_buffer))
        it = it.batch(self.local_batch_size, drop_remainder=True)
        self._dataset = it
        self._it = iter(it)

    # -- iteration -----------------------------------------------------------------------------------
    def __iter__(self) -> Loader:
        return self

    def next_local(self) -> dict:
        """This host's part of the next batch as numpy (leading dim ``global_batch_size / process_count``)."""
        return next(self._it)

    def to_global(self, local: dict) -> dict:
        """Assemble a host-local numpy batch into global jax.Arrays sharded ``P(batch_axes)``."""
        if self._simulated:
            raise RuntimeError(f"process_count {self.process_count} is simulated (jax has {jax.process_count()}): "
                               "use next_local()")
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharding, np.asarray(x)), local)

    def __next__(self) -> dict:
        return self.to_global(self.next_local())

    # -- state -----------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """JSON-able iterator state (position of the next batch)."""
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)

    @property
    def iterator(self) -> grain.DatasetIterator:
        """The underlying grain iterator (what the orbax handler saves and restores)."""
        return self._it

    def checkpoint_args(self):
        """``grain.checkpoint.CheckpointSave`` for an ``ocp.args.Composite`` entry of the model's step."""
        return grain.checkpoint.CheckpointSave(self._it)

    def restore_args(self):
        """``grain.checkpoint.CheckpointRestore``: restores this loader's position in place."""
        return grain.checkpoint.CheckpointRestore(self._it)

    def close(self) -> None:
        """Stop worker processes (if any)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_loader(source: Any, cfg: LoaderConfig, mesh: Mesh, batch_axes: Sequence[str] = ("data",), *,
                process_index: int | None = None, process_count: int | None = None) -> Loader:
    """The training loader over a random-access ``source`` (``len(source)``, ``source[i]`` -> dict with
    ``audio`` int16 [N] and ``valid_samples``, as ``segments.open_split`` gives).

    ``process_index`` / ``process_count`` default to ``jax.process_index()`` / ``jax.process_count()``
    (pass others only to simulate hosts, then use :meth:`Loader.next_local`). Raises ValueError when the
    global batch does not divide over the devices along ``batch_axes`` (or the processes), when the source
    is empty, or when ``crop_samples`` exceeds the segment length.
    """
    return Loader(source, cfg, mesh, batch_axes, process_index=process_index, process_count=process_count)
