"""The build report: per-file records -> ``build_report.json``, a small mergeable tally, and the checks that
stop a build which would write nothing.

A *record* is what one file gave (a JSON-able dict, made by ``segments.process_file``):

* used: ``source``, ``path``, ``index`` (position in the input list), ``orig_sample_rate``, ``channels``,
  ``seconds``, ``segments``, ``silent``, ``tails_dropped``, ``tails_padded``, ``bandwidth_hz`` (stored per
  example), ``measured_bandwidth_hz`` and, from a manifest, ``declared_bandwidth_hz`` and ``licence``;
* skipped: ``source``, ``path``, ``index``, ``reason``.

Either may carry ``samples_48k`` (the header's length at 48 kHz), only for the "no segment fits" message.

The :class:`Tally` is what the outcome checks and the split rule need about all records. Both builds fill it
the same way (the Beam build combines one per worker), so both stop with the same message and split alike.
"""

from __future__ import annotations

import dataclasses

from audiosr_jax.data.splits import SPLITS, Decision, SplitStats

_INTERNAL = ("index", "samples_48k")  # fields of a record that the report does not show


@dataclasses.dataclass
class Tally:
    """Counts over records (mergeable, picklable)."""

    validation_fraction: float
    seen: int = 0
    used: int = 0
    segments: int = 0
    silent: int = 0
    tails_dropped: int = 0
    tails_padded: int = 0
    first_skip: tuple | None = None  # (index, path, reason) of the first skipped file in input order
    longest: tuple | None = None  # (samples_48k, source, path) of the longest file that passed the header checks
    splits: SplitStats | None = None

    def __post_init__(self):
        if self.splits is None:
            self.splits = SplitStats(self.validation_fraction)

    def add(self, record: dict) -> Tally:
        """Count one record (returns self)."""
        self.seen += 1
        if "samples_48k" in record:
            self.longest = _max(self.longest, (record["samples_48k"], record["source"], record["path"]))
        if "reason" in record:
            self.first_skip = _min(self.first_skip, (record["index"], record["path"], record["reason"]))
            return self
        self.used += 1
        for k in ("segments", "silent", "tails_dropped", "tails_padded"):
            setattr(self, k, getattr(self, k) + record[k])
        if record["segments"] > 0:
            self.splits.add(record["source"])
        return self

    def merge(self, other: Tally) -> Tally:
        """Both tallies together (a new object)."""
        out = Tally(self.validation_fraction, splits=self.splits.merge(other.splits))
        for k in ("seen", "used", "segments", "silent", "tails_dropped", "tails_padded"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        out.first_skip = _min(self.first_skip, other.first_skip)
        out.longest = _max(self.longest, other.longest)
        return out


def _min(a, b):
    return b if a is None else a if b is None else min(a, b)


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)


def outcome_problem(tally: Tally, cfg, sample_rate: int, inputs_text: str) -> str | None:
    """Why nothing can be written (one line), or None. ``cfg`` is the SegmentConfig."""
    if tally.used == 0:
        first = f" (first: {tally.first_skip[1]}: {tally.first_skip[2]})" if tally.first_skip else ""
        return f"no usable audio in {inputs_text}: all {tally.seen} audio files were skipped{first}"
    if tally.segments > 0:
        return None
    need = cfg.segment_samples if cfg.tail == "drop" else min(cfg.segment_samples, cfg.min_tail_samples)
    if tally.longest is not None and tally.longest[0] < need:
        hint = ("use a shorter --segment_seconds or --tail pad" if cfg.tail == "drop"
                else "use a shorter --min_tail_seconds or --segment_seconds")
        return (f"no segment fits: segment length {cfg.segment_seconds:g} s (tail={cfg.tail}, min tail "
                f"{cfg.min_tail_seconds:g} s) is longer than every file; the longest is {tally.longest[2]} "
                f"({tally.longest[0] / sample_rate:.3f} s); {hint}")
    return (f"no segments written: every segment was silent or too short ({tally.silent} silent, "
            f"{tally.tails_dropped} tails dropped, {tally.seen - tally.used} of {tally.seen} files skipped)")


def make_report(head: dict, records: list[dict], decision: Decision, ignored: list[str]) -> dict:
    """``build_report.json``'s content. ``head``: the build's own fields (dataset, config, inputs, ...);
    ``records``: every file's record, any order (sorted here by input position)."""
    records = sorted(records, key=lambda r: r["index"])
    skipped = sorted(({k: r[k] for k in ("source", "path", "reason")} for r in records if "reason" in r),
                     key=lambda r: r["source"])
    files = []
    for r in records:
        if "reason" in r:
            continue
        f = {k: v for k, v in r.items() if k not in _INTERNAL and k != "path"}
        f["split"] = decision.split_of(r["source"]) if r["segments"] > 0 else None
        files.append(f)
    return {
        **head,
        "files_seen": len(records), "files_used": len(files), "files_skipped": len(skipped),
        "segments": {s: sum(f["segments"] for f in files if f["split"] == s) for s in SPLITS
                     if s in decision.splits},
        "segments_dropped_silent": sum(f["silent"] for f in files),
        "tails_dropped": sum(f["tails_dropped"] for f in files),
        "tails_padded": sum(f["tails_padded"] for f in files),
        "skipped": skipped, "ignored_non_audio": ignored, "notes": list(decision.notes), "files": files,
    }
