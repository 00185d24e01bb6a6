"""TFDS builder ``audio_segments``: folders of audio files -> 48 kHz mono int16 training segments in ArrayRecord.

Every audio file that soundfile (libsndfile) reads, at any sample rate and channel count, is

1. checked from its header (sample rate >= ``min_sample_rate``, channels <= ``max_channels``, frames > 0, a
   WAV whose data chunk runs past the end of the file is refused as truncated),
2. decoded (NaN / inf samples and silent files are refused), mixed to mono (``channels="mix"``) or kept as one
   example stream per channel (``channels="split"``), resampled to 48 kHz with soxr (VHQ),
3. cut into segments of ``segment_samples`` with hop ``hop_samples`` (no overlap by default); the tail shorter
   than a segment is zero-padded (``tail="pad"``, only if it is at least ``min_tail_seconds`` long) or dropped,
4. a segment whose RMS over its valid (unpadded) samples is below ``silence_dbfs`` is dropped and counted,
5. stored as int16 (``round(x * 32767)``, clipped) with its metadata (see :func:`AudioSegments._info`).

Files go to ``train`` or ``validation`` by a stable hash of their source name (``<domain>/<relative path>``),
so the segments of one file never straddle splits. A file that cannot be used is skipped with a one-line reason;
the build never crashes on bad data. Each build writes ``build_report.json`` next to the ArrayRecord files
(files seen / used / skipped with reasons, segments per split, silent segments and tails dropped, one entry per
file) and logs the same through :mod:`logging` (logger ``audiosr_jax.data.segments``).

All files are decoded and cut before splits are assigned (TFDS cannot write an empty split; only decoding tells
which files yield segments); the cut segments are kept in memory up to ``cache_bytes``, the rest is decoded again.

Deterministic: files are enumerated in sorted order, decoded by a thread pool whose results are consumed in
input order, TFDS shuffles by a hash of the example key, and examples are serialized with sorted protobuf map
entries (see ``_deterministic_example_serialization``); two builds of the same inputs give byte-identical
ArrayRecord files, ``features.json`` and ``dataset_info.json``.

Nothing is lost on a rebuild: :func:`build_dataset` builds into a hidden staging folder next to the dataset and
renames the finished version dir into place; with ``overwrite`` the previous build (only a build of this builder)
is replaced only then, so bad sources, a crash or Ctrl-C leave it byte for byte as it was.

Reading needs no TensorFlow: ``open_split(version_dir, "train")[i]`` is a dict of numpy values.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audiosr_jax.atomic import swap_in
from audiosr_jax.errors import AudioError, UserError
from audiosr_jax.paths import is_remote, scheme
from audiosr_jax.paths import resolve as resolve_path

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
DOMAINS = ("speech", "music", "effects")  # ClassLabel order: 0 speech, 1 music, 2 effects
SPLITS = ("train", "validation")
DATASET_VERSION = "1.0.0"
REPORT_NAME = "build_report.json"

# extensions of the container formats libsndfile reads; other files in a source folder are listed as ignored
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64 .sd2 .voc .paf .iff .svx "
    ".nist .sph .mat .mat4 .mat5 .pvf .xi .htk .sds .avr .wve .mpc".split()
)


class DatasetError(UserError):
    """The dataset cannot be built as asked (no audio in a folder, no segment fits, bad option, ...)."""


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """How files are cut into training examples. Plain fields, JSON-safe (``to_dict`` / ``from_dict``).

    Attributes:
      segment_seconds: segment length in seconds at 48 kHz (10.24 s = 491 520 samples, two 5.12 s windows).
      tail: ``"pad"``: the last partial segment is zero-padded to full length (dropped anyway when it is shorter
        than ``min_tail_seconds``); ``"drop"``: it is dropped.
      min_tail_seconds: shortest tail that is kept with ``tail="pad"``.
      channels: ``"mix"``: average all channels to mono (``channel=-1``); ``"split"``: each channel of a
        multi-channel file becomes its own example stream (``channel`` = its index).
      silence_dbfs: a segment whose RMS over its valid samples is below this (dB re full scale 1.0) is dropped.
      validation_fraction: share of *files* (by hash of their source name) that go to ``validation``; 0 builds
        the ``train`` split only.
      min_sample_rate: files below this rate (Hz) are skipped (1 kHz audio has nothing to super-resolve from).
      max_channels: files with more channels are skipped.
      hop_seconds: distance between segment starts; ``None`` = ``segment_seconds`` (no overlap).
    """

    segment_seconds: float = 10.24
    tail: str = "pad"
    min_tail_seconds: float = 1.0
    channels: str = "mix"
    silence_dbfs: float = -60.0
    validation_fraction: float = 0.1
    min_sample_rate: int = 4000
    max_channels: int = 16
    hop_seconds: float | None = None

    def __post_init__(self):
        problems = []
        if not (math.isfinite(self.segment_seconds) and self.segment_seconds > 0) or self.segment_samples < 1:
            problems.append(f"segment_seconds must be > 0 (got {self.segment_seconds})")
        if self.tail not in ("pad", "drop"):
            problems.append(f"tail must be 'pad' or 'drop' (got {self.tail!r})")
        if self.channels not in ("mix", "split"):
            problems.append(f"channels must be 'mix' or 'split' (got {self.channels!r})")
        if not (math.isfinite(self.min_tail_seconds) and self.min_tail_seconds >= 0):
            problems.append(f"min_tail_seconds must be >= 0 (got {self.min_tail_seconds})")
        if not math.isfinite(self.silence_dbfs):
            problems.append(f"silence_dbfs must be finite (got {self.silence_dbfs})")
        if not 0.0 <= self.validation_fraction < 1.0:
            problems.append(f"validation_fraction must be in [0, 1) (got {self.validation_fraction})")
        if self.min_sample_rate < 1:
            problems.append(f"min_sample_rate must be >= 1 (got {self.min_sample_rate})")
        if self.max_channels < 1:
            problems.append(f"max_channels must be >= 1 (got {self.max_channels})")
        if self.hop_seconds is not None and not (math.isfinite(self.hop_seconds) and self.hop_samples >= 1):
            problems.append(f"hop_seconds must be > 0 (got {self.hop_seconds})")
        if problems:
            raise DatasetError("invalid segment config: " + "; ".join(problems))

    @property
    def segment_samples(self) -> int:
        """Samples per example at 48 kHz."""
        return int(round(self.segment_seconds * SAMPLE_RATE))

    @property
    def hop_samples(self) -> int:
        """Samples between consecutive segment starts at 48 kHz."""
        return self.segment_samples if self.hop_seconds is None else int(round(self.hop_seconds * SAMPLE_RATE))

    @property
    def min_tail_samples(self) -> int:
        return int(round(self.min_tail_seconds * SAMPLE_RATE))

    @property
    def name(self) -> str:
        """Deterministic BuilderConfig name, e.g. ``seg10240ms_pad_mix``. Fields other than segment length, tail
        and channels add a short hash of the whole config when they differ from the defaults."""
        n = self.segment_samples
        length = f"seg{n // 48}ms" if n % 48 == 0 else f"seg{n}smp"
        name = f"{length}_{self.tail}_{self.channels}"
        base = dataclasses.replace(SegmentConfig(), segment_seconds=self.segment_seconds, tail=self.tail,
                                   channels=self.channels)
        if self != base:
            digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
            name += f"_{digest}"
        return name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegmentConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise DatasetError(f"invalid segment config: unknown field(s) {unknown}")
        return cls(**dict(d))


# ----------------------------------------------------------------------------------------------------------
# inputs, header checks and split assignment
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Input:
    domain: str
    path: Path  # the file as found (under the folder given)
    source: str  # "<domain>/<relative path>", the stored ``source`` feature


def normalize_sources(sources) -> list[tuple[str, Path]]:
    """``{domain: [path, ...]}`` or ``[(domain, path), ...]`` (or one path) -> sorted-free list of (domain, Path).

    Paths are folders (searched recursively) or single files. Raises DatasetError on an unknown domain."""
    if isinstance(sources, Mapping):
        pairs = []
        for domain, paths in sources.items():
            if isinstance(paths, (str, os.PathLike)):
                paths = [paths]
            pairs += [(domain, p) for p in paths]
    else:
        pairs = list(sources)
    out = []
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DatasetError(f"a source must be (domain, path), got {item!r}")
        domain, path = item
        if domain not in DOMAINS:
            raise DatasetError(f"unknown domain {domain!r} for {os.fspath(path)} (choose from {', '.join(DOMAINS)})")
        out.append((str(domain), Path(path)))
    if not out:
        raise DatasetError("no sources given: pass at least one DOMAIN=FOLDER")
    return out


def _discover(pairs: Sequence[tuple[str, Path]]) -> tuple[list[_Input], list[str]]:
    """Enumerate audio files in sorted order. Returns (inputs, ignored non-audio files). Raises DatasetError for
    a missing folder or a folder without any audio file."""
    by_domain: dict[str, int] = {}
    for domain, _ in pairs:
        by_domain[domain] = by_domain.get(domain, 0) + 1
    inputs: list[_Input] = []
    ignored: list[str] = []
    used_prefixes: set[str] = set()
    for domain, root in pairs:
        if not root.exists():
            raise DatasetError(f"{root}: no such file or folder ({domain} source)")
        if root.is_file():
            files, base = [root], root.parent
        else:
            files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
            base = root
        # several folders of one domain: keep their files apart by the folder name
        prefix = domain
        if by_domain[domain] > 1:
            prefix = f"{domain}/{root.name if root.is_dir() else root.stem}"
            k, stem = 1, prefix
            while prefix in used_prefixes:
                k += 1
                prefix = f"{stem}_{k}"
        used_prefixes.add(prefix)
        audio = []
        for p in files:
            if p.suffix.lower() in AUDIO_EXTENSIONS:
                audio.append(_Input(domain, p, f"{prefix}/{p.relative_to(base).as_posix()}"))
            else:
                ignored.append(str(p))
        if not audio:
            what = "is not an audio file" if root.is_file() else "contains no audio files"
            raise DatasetError(
                f"{root}: {what} ({domain} source; looked for {', '.join(sorted(AUDIO_EXTENSIONS)[:8])}, ...)")
        inputs += audio
    seen: dict[str, Path] = {}
    for inp in inputs:
        if inp.source in seen:
            raise DatasetError(f"{inp.path} and {seen[inp.source]} map to the same source name {inp.source}")
        seen[inp.source] = inp.path
    return inputs, ignored


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


def _probe(inp: _Input, cfg: SegmentConfig) -> dict | str:
    """Header checks. Returns the header facts, or a one-line reason to skip the file."""
    import soundfile as sf

    try:
        size = inp.path.stat().st_size
    except OSError as e:
        return f"cannot stat ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        info = sf.info(str(inp.path))
    except Exception as e:  # libsndfile: not audio, unknown format, truncated header
        return f"not a readable audio file ({_one_line(e)})"
    if info.frames <= 0:
        return "no audio frames (zero length)"
    if info.samplerate < cfg.min_sample_rate:
        return (f"sample rate {info.samplerate} Hz is below the minimum {cfg.min_sample_rate} Hz "
                f"(too little bandwidth to train super-resolution on)")
    if info.channels > cfg.max_channels:
        return f"{info.channels} channels, more than max_channels={cfg.max_channels}"
    truncated = _wav_truncation(inp.path)
    if truncated:
        return truncated
    return {"orig_sample_rate": int(info.samplerate), "channels": int(info.channels), "frames": int(info.frames),
            "samples_48k": int(round(info.frames * SAMPLE_RATE / info.samplerate))}


def _unit_hash(source: str) -> float:
    """Stable value in [0, 1) from a source name (sha256; independent of PYTHONHASHSEED and the machine)."""
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") / 2.0**64


def assign_splits(sources: Sequence[str], validation_fraction: float) -> tuple[dict[str, str], list[str]]:
    """Split per file by a stable hash of its source name: ``validation`` when hash < fraction.

    When there are >= 2 files and a split that is asked for got none, the file nearest to the boundary is moved
    there. Returns ({source: split}, notes for the log)."""
    h = {s: _unit_hash(s) for s in sources}
    split = {s: ("validation" if h[s] < validation_fraction else "train") for s in sources}
    notes = []
    if validation_fraction > 0:
        if len(sources) >= 2:
            for want, pick in (("validation", min), ("train", max)):
                if want not in split.values():
                    s = pick(sources, key=lambda x: (h[x], x))
                    split[s] = want
                    notes.append(f"split {want} got no file by hash; moved {s} there")
        else:
            notes.append(f"only {len(sources)} usable file: the validation split is empty")
    return split, notes


# ----------------------------------------------------------------------------------------------------------
# decoding and cutting (runs in worker threads; pure function of its inputs)
# ----------------------------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _cut_file(inp: _Input, header: dict, cfg: SegmentConfig) -> dict:
    """Decode one file and cut it into examples. Never raises for bad data: returns ``{"skip": reason}``."""
    from audiosr_jax.audio import load_audio, resample

    res = {"source": inp.source, "path": str(inp.path), "skip": None}
    try:
        # the inference loader's checks (zero frames, NaN / inf, silent), with the builder's channel limit
        audio, sr = load_audio(inp.path, max_channels=cfg.max_channels)
    except AudioError as e:
        msg = str(e)
        prefix = os.fspath(inp.path) + ": "
        res["skip"] = msg[len(prefix):] if msg.startswith(prefix) else msg
        return res
    except Exception as e:  # anything libsndfile throws at a damaged file
        res["skip"] = f"cannot decode ({_one_line(e)})"
        return res
    if audio.shape[1] < header["frames"]:
        res["skip"] = f"truncated file (decoded {audio.shape[1]} of {header['frames']} frames)"
        return res
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
            examples.append({
                "audio": pcm, "valid_samples": np.int32(valid), "source": inp.source, "offset": np.int64(start),
                "domain": inp.domain, "orig_sample_rate": np.int32(sr), "channel": np.int32(channel),
            })
    res.update(orig_sample_rate=int(sr), channels=int(audio.shape[0]),
               seconds=round(audio.shape[1] / sr, 3), segments=len(examples), silent=silent,
               tails_dropped=tails_dropped, tails_padded=tails_padded, examples=examples)
    return res


def _ordered_map(fn: Callable, items: Iterable, workers: int, ahead: int) -> Iterator:
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


# ----------------------------------------------------------------------------------------------------------
# the TFDS builder
# ----------------------------------------------------------------------------------------------------------

import tensorflow_datasets as tfds  # noqa: E402  (after the pure-numpy helpers; no TensorFlow is imported)


@dataclasses.dataclass(eq=False)
class AudioSegmentsConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying a :class:`SegmentConfig` (its ``name`` is ``segment.name``)."""

    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)


def _make_builder_config(segment: SegmentConfig) -> AudioSegmentsConfig:
    return AudioSegmentsConfig(
        name=segment.name, version=DATASET_VERSION,
        description="SegmentConfig " + json.dumps(segment.to_dict(), sort_keys=True), segment=segment)


_PRESETS = (
    SegmentConfig(),
    SegmentConfig(tail="drop"),
    SegmentConfig(channels="split"),
    SegmentConfig(segment_seconds=5.12),
)


@contextlib.contextmanager
def _deterministic_example_serialization():
    """TFDS serializes each ``tf.train.Example`` with ``SerializeToString()``: protobuf (upb) writes the entries
    of the ``features`` map in a hash order that changes from process to process, so two builds of the same
    data differ byte for byte (same records when parsed). While this builder writes, serialize with
    ``deterministic=True`` (map entries sorted by key); readers parse both orders alike."""
    from tensorflow_datasets.core import example_serializer

    cls = example_serializer.ExampleSerializer
    original = cls.serialize_example

    def serialize_example(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)

    cls.serialize_example = serialize_example
    try:
        yield
    finally:
        cls.serialize_example = original


class AudioSegments(tfds.core.GeneratorBasedBuilder):
    """48 kHz mono int16 audio segments with per-example metadata (see the module docstring).

    Sources: the ``sources`` argument (``{domain: [folder, ...]}`` or ``[(domain, folder), ...]``), or, when it is
    None (the ``tfds build`` path), the manual dir's ``speech/``, ``music/`` and ``effects/`` subfolders.
    """

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "int16 segments (raw bytes) with source, offset, domain, original rate, channel."}
    BUILDER_CONFIGS = [_make_builder_config(s) for s in _PRESETS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Only for `tfds build`: point --manual_dir at a folder with speech/, music/ and/or effects/ subfolders of "
        "audio files (e.g. out/corpus). Prefer `python data/build.py --source DOMAIN=FOLDER ...`.")

    def __init__(self, *, sources=None, workers: int | None = None, cache_bytes: int = 1 << 30, **kwargs):
        self._sources = sources
        self._cache_bytes = cache_bytes
        self._workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        if kwargs.get("file_format") is None:  # TFDS's default (tfrecord) needs TensorFlow
            kwargs["file_format"] = "array_record"
        super().__init__(**kwargs)

    # static: depends on nothing but the class and its config (readers and grain workers re-create it)
    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Training segments for audio super-resolution: 48 kHz mono int16 (float * 32767).",
            features=tfds.features.FeaturesDict({
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding="bytes"),
                "valid_samples": tfds.features.Scalar(np.int32, doc="real samples before tail padding"),
                "source": tfds.features.Text(doc="<domain>/<path relative to its source folder>"),
                "offset": tfds.features.Scalar(np.int64, doc="first sample of the segment in the file, 48 kHz"),
                "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
                "orig_sample_rate": tfds.features.Scalar(np.int32, doc="the file's sample rate in Hz"),
                "channel": tfds.features.Scalar(np.int32, doc="channel index, -1 when mixed to mono"),
            }),
            supervised_keys=None,
            homepage="https://github.com/haoheliu/versatile_audio_super_resolution",
        )

    def _download_and_prepare(self, *args, **kwargs):
        with _deterministic_example_serialization():
            return super()._download_and_prepare(*args, **kwargs)

    # -- preparation: discovery, header checks, fit check, decoding, split assignment ------------------------
    #
    # Every file is decoded and cut *before* splits are assigned: TFDS cannot write an empty split, and only
    # decoding tells which files yield segments (a corrupt or all-silent file yields none). Cut examples are
    # kept in memory up to ``cache_bytes``; files beyond that are decoded a second time while writing.

    def _prepare_plan(self, dl_manager) -> None:
        cfg: SegmentConfig = self.builder_config.segment
        if self._sources is not None:
            pairs = normalize_sources(self._sources)
        else:
            manual = Path(os.fspath(dl_manager.manual_dir))
            pairs = [(d, manual / d) for d in DOMAINS if (manual / d).is_dir()]
            if not pairs:
                raise DatasetError(f"{manual}: no {'/, '.join(DOMAINS)}/ subfolder to build from")
        inputs, ignored = _discover(pairs)
        headers, skipped = {}, []

        def skip(source, path, reason):
            skipped.append({"source": source, "path": str(path), "reason": reason})
            logger.warning("skipped %s: %s", path, reason)

        for inp in inputs:
            h = _probe(inp, cfg)
            if isinstance(h, str):
                skip(inp.source, inp.path, h)
            else:
                headers[inp.source] = h
        usable = [inp for inp in inputs if inp.source in headers]
        if not usable:
            raise DatasetError(
                f"no usable audio in {', '.join(str(r) for _, r in pairs)}: all {len(inputs)} audio files were "
                f"skipped (first: {skipped[0]['path']}: {skipped[0]['reason']})")
        longest = max(usable, key=lambda i: (headers[i.source]["samples_48k"], i.source))
        n_long = headers[longest.source]["samples_48k"]
        need = cfg.segment_samples if cfg.tail == "drop" else min(cfg.segment_samples, cfg.min_tail_samples)
        if n_long < need:
            hint = ("use a shorter --segment_seconds or --tail pad" if cfg.tail == "drop"
                    else "use a shorter --min_tail_seconds or --segment_seconds")
            raise DatasetError(
                f"no segment fits: segment length {cfg.segment_seconds:g} s (tail={cfg.tail}, min tail "
                f"{cfg.min_tail_seconds:g} s) is longer than every file; the longest is {longest.path} "
                f"({n_long / SAMPLE_RATE:.3f} s); {hint}")

        files, self._cache = [], {}
        cache_left = self._cache_bytes
        for res in _ordered_map(lambda inp: _cut_file(inp, headers[inp.source], cfg), usable, self._workers,
                                ahead=2 * self._workers):
            if res["skip"] is not None:
                skip(res["source"], res["path"], res["skip"])
                continue
            examples = res.pop("examples")
            size = len(examples) * cfg.segment_samples * 2
            if size <= cache_left:
                cache_left -= size
                self._cache[res["source"]] = examples
            del res["skip"]
            files.append(res)
            if not examples:
                logger.warning("%s: no segment kept (%d silent, %d tail(s) dropped)", res["path"], res["silent"],
                               res["tails_dropped"])
        productive = [f["source"] for f in files if f["segments"] > 0]
        totals = {k: sum(f[k] for f in files) for k in ("segments", "silent", "tails_dropped", "tails_padded")}
        if not productive:
            raise DatasetError(
                f"no segments written: every segment was silent or too short ({totals['silent']} silent, "
                f"{totals['tails_dropped']} tails dropped, {len(skipped)} of {len(inputs)} files skipped)")
        split, notes = assign_splits(productive, cfg.validation_fraction)
        for note in notes:
            logger.warning("%s", note)
        for f in files:
            f["split"] = split.get(f["source"])  # None: the file gave no segment
        self._split_list = tuple(s for s in SPLITS if s in split.values())
        by_source = {i.source: i for i in usable}
        self._plan = [(by_source[f["source"]], headers[f["source"]], f) for f in files if f["split"]]
        skipped.sort(key=lambda r: r["source"])
        self._report = {
            "dataset": self.name, "config_name": cfg.name, "version": str(self.version),
            "segment_config": cfg.to_dict(), "segment_samples": cfg.segment_samples, "sample_rate": SAMPLE_RATE,
            "inputs": [{"domain": d, "path": str(p)} for d, p in pairs],
            "files_seen": len(inputs), "files_used": len(files), "files_skipped": len(skipped),
            "segments": {s: sum(f["segments"] for f in files if f["split"] == s) for s in self._split_list},
            "segments_dropped_silent": totals["silent"], "tails_dropped": totals["tails_dropped"],
            "tails_padded": totals["tails_padded"],
            "skipped": skipped, "ignored_non_audio": ignored, "notes": notes,
            "files": [{k: v for k, v in f.items() if k != "path"} for f in files],
        }
        self._splits_done: set[str] = set()

    def _split_generators(self, dl_manager):
        self._prepare_plan(dl_manager)
        return {s: self._generate_examples(s) for s in self._split_list}

    def _generate_examples(self, split: str):
        cfg: SegmentConfig = self.builder_config.segment
        todo = [(inp, h, f) for inp, h, f in self._plan if f["split"] == split]

        def examples_of(item):
            inp, header, f = item
            cached = self._cache.pop(inp.source, None)
            if cached is not None:
                return cached
            res = _cut_file(inp, header, cfg)  # not cached: decode again (same pure function, same result)
            if res["skip"] is not None or res["segments"] != f["segments"]:
                raise DatasetError(f"{inp.path}: changed while the dataset was being built")
            return res["examples"]

        for examples in _ordered_map(examples_of, todo, self._workers, ahead=2 * self._workers):
            for ex in examples:
                yield f"{ex['source']}|{int(ex['channel'])}|{int(ex['offset'])}", ex
        self._splits_done.add(split)
        # written into the (temporary) version dir, which TFDS renames when every split is written
        path = Path(os.fspath(self.data_dir)) / REPORT_NAME
        path.write_text(json.dumps(self._report, indent=1, sort_keys=True) + "\n")


def builder_config_for(segment: SegmentConfig | None) -> AudioSegmentsConfig:
    """The class's preset BuilderConfig when one matches ``segment``, else a custom one with the same naming."""
    segment = segment or SegmentConfig()
    for bc in AudioSegments.BUILDER_CONFIGS:
        if bc.segment == segment:
            return bc
    return _make_builder_config(segment)


# ----------------------------------------------------------------------------------------------------------
# build / read API
# ----------------------------------------------------------------------------------------------------------


def build_dataset(sources, data_dir, *, config: SegmentConfig | None = None, overwrite: bool = False,
                  workers: int | None = None, cache_bytes: int = 1 << 30) -> Path:
    """Build the ``audio_segments`` dataset from folders of audio files.

    Args:
      sources: ``{domain: [folder_or_file, ...]}`` or ``[(domain, folder_or_file), ...]``, domain in
        ``DOMAINS``. Folders are searched recursively; files are taken in sorted order.
      data_dir: TFDS data dir; the dataset goes to ``<data_dir>/audio_segments/<config name>/<version>/``.
        A local path or a ``file://`` URI: an object store (``gs://``) is refused (the build stages and renames
        folders); build locally and copy the version dir there (``gsutil -m cp -r``), training reads it there.
      config: the :class:`SegmentConfig` (default: 10.24 s, pad, mix).
      overwrite: replace an existing build of the same config; without it an existing build is an error (the
        config name does not encode the sources, so silently reusing it could serve other data). Only a build
        of this builder is replaced, and only once the new one is complete (see :func:`audiosr_jax.atomic.swap_in`): a build that
        fails or is interrupted leaves the previous one as it was.
      workers: decode/resample threads (default min(4, cpu count)); the output does not depend on it.
      cache_bytes: int16 segments kept in memory between the decode pass and writing; files beyond it are
        decoded again while writing (same bytes, more time).

    Returns:
      The version dir (``dataset_info.json``, ``features.json``, ``audio_segments-{train,validation}
      .array_record-*``, ``build_report.json``).

    Raises:
      DatasetError: no sources, unknown domain, a folder with no audio, no usable file, no segment fits, every
        segment silent, an existing build without ``overwrite``, something at the version dir's path that is
        not a build of ours, or a ``data_dir`` on an object store. Bad *files* never raise: they are skipped and
        listed in ``build_report.json``.
    """
    t0 = time.perf_counter()
    if is_remote(data_dir):
        raise DatasetError(f"{os.fspath(data_dir)}: a dataset is built on the local disk; build it there and copy "
                           f"the version dir to the object store (gsutil -m cp -r), then train with "
                           f"--config.data.dataset_dir=<that URI>")
    bc = builder_config_for(config)
    pairs = normalize_sources(sources)
    data_dir = Path(os.fspath(resolve_path(data_dir)) if scheme(data_dir) == "file" else data_dir)
    rel = Path(AudioSegments.name, bc.name, str(AudioSegments.VERSION))  # TFDS's <name>/<config>/<version>
    version_dir = data_dir / rel
    if version_dir.exists() or version_dir.is_symlink():
        if not overwrite:
            raise DatasetError(f"{version_dir} already exists; pass overwrite=True (--overwrite) to rebuild it")
        if not _is_our_build(version_dir):
            raise DatasetError(f"{version_dir}: not a build of {AudioSegments.name} (no dataset_info.json and "
                               f"{REPORT_NAME} of this builder); refusing to replace it, move it away first")
    _discover(pairs)  # a missing folder or one without audio: fail before anything touches the disk
    # build into a hidden sibling TFDS data dir (same filesystem: the finished version dir is renamed into
    # place); removed whatever happens, so a failed build leaves data_dir as it was
    new_data_dir = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{AudioSegments.name}-build-", dir=data_dir))
    try:
        builder = AudioSegments(sources=pairs, workers=workers, cache_bytes=cache_bytes, data_dir=str(staging),
                                config=bc)
        built = Path(os.fspath(builder.data_dir))
        if built != staging / rel:  # the layout this function relies on to find the build
            raise RuntimeError(f"TFDS put the {bc.name} build at {built}, expected {staging / rel}")
        dl_config = tfds.download.DownloadConfig(try_download_gcs=False,
                                                 compute_stats=tfds.download.ComputeStatsMode.SKIP)
        builder.download_and_prepare(download_dir=str(staging / "downloads"), download_config=dl_config)
        swap_in(built, version_dir, aside=staging / "previous")
        _carry_config_metadata(staging / rel.parts[0], data_dir / rel.parts[0])
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the new build's leftovers, or the replaced old build
        if new_data_dir:
            _drop_empty_dir(data_dir)
    rep = json.loads((version_dir / REPORT_NAME).read_text())
    logger.info(
        "built %s in %.1f s: %d files seen, %d used, %d skipped; segments %s; %d silent dropped, %d tails dropped,"
        " %d tails padded", version_dir, time.perf_counter() - t0, rep["files_seen"], rep["files_used"],
        rep["files_skipped"], rep["segments"], rep["segments_dropped_silent"], rep["tails_dropped"],
        rep["tails_padded"])
    for s in rep["skipped"]:
        logger.info("  skipped %s: %s", s["path"], s["reason"])
    return version_dir


def _is_our_build(path: Path) -> bool:
    """True when ``path`` is a finished build of this builder (a real folder holding TFDS's
    ``dataset_info.json`` named ``audio_segments`` and our ``build_report.json``), i.e. safe to replace."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        info = json.loads((path / "dataset_info.json").read_text())
        report = json.loads((path / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(info, dict) and isinstance(report, dict) and info.get("name") == AudioSegments.name
            and report.get("dataset") == AudioSegments.name)


def _carry_config_metadata(staged: Path, dataset_dir: Path) -> None:
    """Move TFDS's ``<name>/.config/metadata.json`` (the default config name, which TFDS rewrites on every
    build) from the staging data dir to the real one, so the layout is the same as a build made in place."""
    src = staged / ".config" / "metadata.json"
    if src.is_file():
        (dataset_dir / ".config").mkdir(parents=True, exist_ok=True)
        os.replace(src, dataset_dir / ".config" / "metadata.json")


def _drop_empty_dir(path: Path) -> None:
    try:
        for sub in sorted(path.rglob("*"), reverse=True):
            if sub.is_dir():
                sub.rmdir()
        path.rmdir()
    except OSError:  # not empty (or absent): leave it
        pass


def open_split(version_dir, split: str):
    """Random-access source of one split: ``src[i]`` is a dict of numpy values (``audio`` int16 [N],
    ``valid_samples``, ``source`` (bytes), ``offset``, ``domain`` (int, index into ``DOMAINS``),
    ``orig_sample_rate``, ``channel``). No TensorFlow is imported.

    ``version_dir``: a local path or a URI (``gs://bucket/tfds/audio_segments/<config>/<version>``, or
    ``file://``; :func:`audiosr_jax.paths.resolve`). TFDS reads the metadata through epath (``gcsfs`` or
    TensorFlow for ``gs://``); the ArrayRecord files are opened by array_record's own reader, whose 0.8.6
    build has a ``gs://`` (GCS) reader but none for ``s3://`` / ``az://``."""
    return tfds.builder_from_directory(resolve_path(version_dir)).as_data_source(split=split)


def read_build_report(version_dir) -> dict:
    """The ``build_report.json`` of a build (see :func:`build_dataset`); ``version_dir`` may be a URI."""
    return json.loads((resolve_path(version_dir) / REPORT_NAME).read_text())
