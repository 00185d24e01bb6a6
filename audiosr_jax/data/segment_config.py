"""What a build is asked for: :class:`SegmentConfig` (how files are cut), the domains, and the build's error.

Plain Python (no TFDS, no Beam): imported by the builder, by the per-file worker code and by the CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from audiosr_jax.errors import UserError

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
