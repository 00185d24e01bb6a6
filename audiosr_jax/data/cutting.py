"""One file -> its training examples and its report record, decoding the file once.

:func:`process_file` is the whole per-file job of both builds (the single-process thread pool and the Beam
workers): header checks, decode (with the inference loader's checks), bandwidth (the 60 dB rule of
:mod:`audiosr_jax.data.bandwidth`), mix or split channels, resample to 48 kHz, cut, drop silent segments.
It never raises for bad data: a file that cannot be used gives a record with a one-line ``reason``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from audiosr_jax.data.bandwidth import measure_bandwidth
from audiosr_jax.data.inputs import Input
from audiosr_jax.data.segment_config import SAMPLE_RATE, SegmentConfig
from audiosr_jax.errors import AudioError
from audiosr_jax.paths import is_remote


def example_key(source: str, channel: int, offset: int) -> str:
    """The TFDS key of an example (TFDS orders examples by a hash of it)."""
    return f"{source}|{int(channel)}|{int(offset)}"


def process_file(inp: Input, cfg: SegmentConfig) -> tuple[dict, list[tuple[str, dict]]]:
    """Decode one file once -> (its record, its examples as ``(key, example)``); see
    :mod:`audiosr_jax.data.report` for the record's fields. Memory: one file's audio and examples."""
    record = {"source": inp.source, "path": inp.location, "index": inp.index}
    with _local_file(inp.location) as local:
        if isinstance(local, str):
            return {**record, "reason": local}, []
        header = probe(local, cfg)
        if isinstance(header, str):
            return {**record, "reason": header}, []
        record["samples_48k"] = header["samples_48k"]
        audio, sr = _decode(local, header, cfg)
    if isinstance(audio, str):
        return {**record, "reason": audio}, []
    measured = min(measure_bandwidth(audio.mean(axis=0), sr), SAMPLE_RATE / 2)
    bandwidth = measured if inp.declared_bandwidth_hz is None else min(measured, inp.declared_bandwidth_hz)
    examples, counts = _cut(inp, audio, sr, np.float32(bandwidth), cfg)
    record.update(orig_sample_rate=int(sr), channels=int(audio.shape[0]), seconds=round(audio.shape[1] / sr, 3),
                  bandwidth_hz=round(float(np.float32(bandwidth)), 1), **counts)
    if inp.licence is not None:
        record["licence"] = inp.licence
    if inp.declared_bandwidth_hz is not None:
        record.update(declared_bandwidth_hz=inp.declared_bandwidth_hz, measured_bandwidth_hz=round(measured, 1))
    return record, examples


@contextlib.contextmanager
def _local_file(location: str):
    """A local path to read ``location`` from: itself, or a temporary copy of a remote URI (removed after).
    Yields a one-line reason (str) instead when the copy fails."""
    if not is_remote(location):
        yield Path(location)
        return
    from etils import epath

    suffix = Path(location.rsplit("/", 1)[-1]).suffix
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="audiosr-build-")
    try:
        try:
            with epath.Path(location).open("rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except Exception as e:  # any file system error: the file is skipped, the build goes on
            yield f"cannot read ({_one_line(e)})"
            return
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _wav_truncation(path: Path) -> str | None:
    """A RIFF/WAVE file whose ``data`` chunk declares more bytes than the file holds is truncated (libsndfile
    silently reads what is there). Returns the reason, or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        order = "little" if head[:4] == b"RIFF" else "big"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            length = int.from_bytes(chunk[4:8], order)
            if chunk[:4] == b"data":
                have = size - pos - 8
                if length != 0xFFFFFFFF and length > have:  # 0xFFFFFFFF: streamed, length unknown
                    return f"truncated file (WAV data chunk declares {length} bytes, {have} present)"
                return None
            pos += 8 + length + (length & 1)
    return None


def probe(path: Path, cfg: SegmentConfig) -> dict | str:
    """Header checks of a local file. Returns the header facts, or a one-line reason to skip the file."""
    import soundfile as sf

    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot stat ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile: not audio, unknown format, truncated header
        return f"not a readable audio file ({_one_line(e)})"
    if info.frames <= 0:
        return "no audio frames (zero length)"
    if info.samplerate < cfg.min_sample_rate:
        return (f"sample rate {info.samplerate} Hz is below the minimum {cfg.min_sample_rate} Hz "
                f"(too little bandwidth to train super-resolution on)")
    if info.channels > cfg.max_channels:
        return f"{info.channels} channels, more than max_channels={cfg.max_channels}"
    truncated = _wav_truncation(path)
    if truncated:
        return truncated
    return {"orig_sample_rate": int(info.samplerate), "channels": int(info.channels), "frames": int(info.frames),
            "samples_48k": int(round(info.frames * SAMPLE_RATE / info.samplerate))}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _decode(path: Path, header: dict, cfg: SegmentConfig) -> tuple[np.ndarray | str, int]:
    """(audio [C, N] float32, rate), or (one-line reason, 0)."""
    from audiosr_jax.audio import load_audio

    try:
        # the inference loader's checks (zero frames, NaN / inf, silent), with the builder's channel limit
        audio, sr = load_audio(path, max_channels=cfg.max_channels)
    except AudioError as e:
        msg, prefix = str(e), os.fspath(path) + ": "
        return (msg[len(prefix):] if msg.startswith(prefix) else msg), 0
    except Exception as e:  # anything libsndfile throws at a damaged file
        return f"cannot decode ({_one_line(e)})", 0
    if audio.shape[1] < header["frames"]:
        return f"truncated file (decoded {audio.shape[1]} of {header['frames']} frames)", 0
    return audio, sr


def _cut(inp: Input, audio: np.ndarray, sr: int, bandwidth: np.float32,
         cfg: SegmentConfig) -> tuple[list[tuple[str, dict]], dict]:
    """Mix or split channels, resample to 48 kHz, cut; -> ((key, example) list, counts for the record)."""
    from audiosr_jax.audio import resample

    if cfg.channels == "mix":
        streams = [(-1, audio.mean(axis=0, keepdims=True))]
    else:
        streams = [(c, audio[c:c + 1]) for c in range(audio.shape[0])]
    seg, hop, min_tail = cfg.segment_samples, cfg.hop_samples, cfg.min_tail_samples
    floor = 10.0 ** (cfg.silence_dbfs / 20.0)
    examples, silent, tails_dropped, tails_padded = [], 0, 0, 0
    for channel, x in streams:
        y = resample(x, sr, SAMPLE_RATE)[0].astype(np.float32)
        n = y.shape[0]
        starts = list(range(0, n - seg + 1, hop)) if n >= seg else []
        tail = starts[-1] + hop if starts else 0
        cuts = [(s, seg) for s in starts]
        if tail < n:  # a partial segment remains
            if cfg.tail == "pad" and n - tail >= min_tail:
                cuts.append((tail, n - tail))
                tails_padded += 1
            else:
                tails_dropped += 1
        for start, valid in cuts:
            piece = y[start:start + valid]
            rms = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64))))
            if rms < floor:
                silent += 1
                if valid < seg:
                    tails_padded -= 1
                continue
            pcm = np.zeros(seg, np.int16)
            pcm[:valid] = np.clip(np.rint(piece * 32767.0), -32767, 32767).astype(np.int16)
            examples.append((example_key(inp.source, channel, start), {
                "audio": pcm, "valid_samples": np.int32(valid), "source": inp.source, "offset": np.int64(start),
                "domain": inp.domain, "orig_sample_rate": np.int32(sr), "channel": np.int32(channel),
                "bandwidth_hz": bandwidth,
            }))
    counts = dict(segments=len(examples), silent=silent, tails_dropped=tails_dropped, tails_padded=tails_padded)
    return examples, counts


def ordered_map(fn: Callable, items: Iterable, workers: int, ahead: int) -> Iterator:
    """``map(fn, items)`` on a thread pool, results in input order, at most ``ahead`` results held."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
