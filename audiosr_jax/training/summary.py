"""What a person watches: TensorBoard scalars, spectrogram images and audio (tensorboardX, no TensorFlow),
and a throughput/MFU estimate from XLA's own cost analysis.

Only process 0 writes. Scalars are flushed every log interval; ``tensorboard --logdir WORKDIR/tb``.

The workdir may be a URI (:mod:`audiosr_jax.paths`): a local path or ``file://`` URI is written by
tensorboardX's own file writer; an object store (``gs://``, ``s3://``, ``az://``, ``hf://``) through
``etils.epath`` (the same file system, and credentials, as the checkpoints: ``gcsfs`` or TensorFlow for
``gs://``), not through tensorboardX's own ``gs://`` / ``s3://`` writers (they need ``google-cloud-storage`` /
``boto3``, and other schemes would become a local folder named ``az:``). An object cannot be appended to, so
each flush (every 30 s and at close) rewrites the whole event file, as tensorboardX's own ``gs://`` writer does.
"""

from __future__ import annotations

import io
import os
from typing import Any

import jax
import numpy as np
from etils import epath

from audiosr_jax import paths

# Peak dense FLOP/s per device (bf16 / fp32), for the MFU estimate. CPU has no meaningful peak: MFU is
# then not reported, only FLOP/s.
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v6e": {"bfloat16": 918e12, "float32": 918e12 / 4},
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for ``dtype``, or None when unknown (CPU, unlisted accelerators)."""
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peaks.get(dtype)
    return None


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled XLA program (its cost analysis), or None if XLA gives none.

    A ``lax.scan`` body is counted once by XLA, so a step with gradient accumulation over n micro-batches
    is scaled by the caller."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def spectrogram_image(mel: np.ndarray, title: str = "") -> np.ndarray:
    """log-mel [T, F] -> RGB uint8 [H, W, 3] (time on x, mel bins on y), via matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    ax.imshow(np.asarray(mel).T, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("frame")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


class EpathRecordFile:
    """A binary file for tensorboardX's record writer on any epath path: ``write`` appends to a buffer,
    ``flush`` / ``close`` write the whole buffer to the path (rewriting what an earlier flush wrote) when
    something was written since."""

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        self._buffer = io.BytesIO()
        self._dirty = True  # the file exists from the first flush on, even if empty
        self.closed = False

    def write(self, data: bytes) -> None:
        self._buffer.write(data)
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self.path.write_bytes(self._buffer.getvalue())
            self._dirty = False

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True


class _EpathWriterFactory:
    """tensorboardX writer factory (``record_writer.register_writer_factory``) writing through epath."""

    def open(self, path: str) -> EpathRecordFile:
        return EpathRecordFile(path)

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def _write_through_epath(scheme: str) -> None:
    """Make tensorboardX write paths ``<scheme>://...`` through epath (its registry is keyed by the text before
    the first ':')."""
    from tensorboardX import record_writer

    if not isinstance(record_writer.REGISTERED_FACTORIES.get(scheme), _EpathWriterFactory):
        record_writer.register_writer_factory(scheme, _EpathWriterFactory())


class SummaryWriter:
    """TensorBoard writer for ``<workdir>/tb`` (a no-op on processes other than 0). ``workdir``: a local path
    or a URI (see the module doc); ``self.logdir`` is where the event files go (an ``epath.Path``)."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.logdir = paths.resolve(workdir) / "tb"
        self._w = None
        if self.enabled:
            from tensorboardX import SummaryWriter as _W

            if paths.is_remote(self.logdir):
                _write_through_epath(paths.scheme(self.logdir))
            self._w = _W(os.fspath(self.logdir), flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._w:
            for k, v in values.items():
                self._w.add_scalar(k, float(v), step)

    def image(self, step: int, name: str, rgb: np.ndarray) -> None:
        if self._w:
            self._w.add_image(name, rgb, step, dataformats="HWC")

    def audio(self, step: int, name: str, wave: np.ndarray, sample_rate: int = 48000) -> None:
        if self._w:
            self._w.add_audio(name, np.clip(np.asarray(wave, np.float32), -1, 1), step, sample_rate=sample_rate)

    def flush(self) -> None:
        if self._w:
            self._w.flush()

    def close(self) -> None:
        if self._w:
            self._w.close()
