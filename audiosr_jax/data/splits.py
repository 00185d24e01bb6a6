"""Split assignment: a file goes to ``validation`` when a stable hash of its source name is < the fraction.

Only files that gave segments ("productive" files) count. When there are >= 2 of them and a split that is
asked for got none by hash, the one nearest the boundary moves there: the lowest hash to ``validation``, the
highest to ``train``. With a single productive file, it is ``train`` and the validation split is empty.

Only the lowest- and highest-hash productive files can ever move, so the rule is streamable:

* :class:`SplitStats` is what the rule needs to know about all productive files (counts, min and max hash).
  It merges (the Beam build combines one per worker), and :meth:`SplitStats.decide` turns it into the few
  moves and the log notes.
* :class:`SplitRouter` (single-process build) sends each file's examples to its split as the file is done,
  holding back only the current lowest- and highest-hash files (at most two files' examples in memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Sequence

SPLITS = ("train", "validation")


def unit_hash(source: str) -> float:
    """Stable value in [0, 1) from a source name (sha256; independent of PYTHONHASHSEED and the machine)."""
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") / 2.0**64


def split_by_hash(source: str, validation_fraction: float) -> str:
    """The split a file gets before the empty-split moves."""
    return "validation" if unit_hash(source) < validation_fraction else "train"


@dataclasses.dataclass
class SplitStats:
    """What the split rule needs to know about the productive files seen so far (mergeable, picklable)."""

    validation_fraction: float
    count: int = 0
    by_hash: dict = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
    lowest: tuple | None = None  # (hash, source) of the lowest-hash productive file
    highest: tuple | None = None

    def add(self, source: str) -> None:
        """Count one productive file."""
        key = (unit_hash(source), source)
        self.count += 1
        self.by_hash[split_by_hash(source, self.validation_fraction)] += 1
        self.lowest = key if self.lowest is None else min(self.lowest, key)
        self.highest = key if self.highest is None else max(self.highest, key)

    def merge(self, other: SplitStats) -> SplitStats:
        """Both counts together (a new object)."""
        out = SplitStats(self.validation_fraction, self.count + other.count,
                         {s: self.by_hash[s] + other.by_hash[s] for s in SPLITS})
        out.lowest = min((k for k in (self.lowest, other.lowest) if k is not None), default=None)
        out.highest = max((k for k in (self.highest, other.highest) if k is not None), default=None)
        return out

    def decide(self) -> Decision:
        """The moves (source -> split), the splits that get files, and notes for the log."""
        moves, notes = {}, []
        counts = dict(self.by_hash)
        if self.validation_fraction > 0 and self.count >= 2:
            for want, key in (("validation", self.lowest), ("train", self.highest)):
                if counts[want] == 0:
                    moves[key[1]] = want
                    counts[want] += 1
                    counts[SPLITS[1 - SPLITS.index(want)]] -= 1
                    notes.append(f"split {want} got no file by hash; moved {key[1]} there")
        elif self.count == 1:
            if counts["validation"]:
                moves[self.lowest[1]] = "train"
                counts = {"train": 1, "validation": 0}
            if self.validation_fraction > 0:
                notes.append("only 1 usable file: the validation split is empty")
        return Decision(moves, tuple(s for s in SPLITS if counts[s] > 0), tuple(notes), self.validation_fraction)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of the split rule for one build."""

    moves: dict
    splits: tuple  # the splits that get at least one file, in SPLITS order
    notes: tuple
    validation_fraction: float

    def split_of(self, source: str) -> str:
        return self.moves.get(source) or split_by_hash(source, self.validation_fraction)


def assign_splits(sources: Sequence[str], validation_fraction: float) -> tuple[dict[str, str], list[str]]:
    """The rule on a list of productive sources: ({source: split}, notes for the log)."""
    stats = SplitStats(validation_fraction)
    for s in sources:
        stats.add(s)
    decision = stats.decide()
    return {s: decision.split_of(s) for s in sources}, list(decision.notes)


class SplitRouter:
    """Streams (split, item) pairs for files fed in any order, holding back only the two files that may move.

    ``feed(source, items)`` for every productive file (``items``: that file's examples), then ``finish()``;
    both yield ``(split, item)``. ``decision`` is set by ``finish``."""

    def __init__(self, validation_fraction: float):
        self.stats = SplitStats(validation_fraction)
        self.decision: Decision | None = None
        self._held: dict[str, list] = {}  # source -> items, only the current lowest and highest

    def feed(self, source: str, items: Iterable) -> Iterator[tuple[str, object]]:
        self.stats.add(source)
        self._held[source] = list(items)
        keep = {k[1] for k in (self.stats.lowest, self.stats.highest)}
        for s in [s for s in self._held if s not in keep]:  # no longer an edge: its hash split is final
            yield from self._release(s, split_by_hash(s, self.stats.validation_fraction))

    def finish(self) -> Iterator[tuple[str, object]]:
        self.decision = self.stats.decide()
        for s in sorted(self._held):
            yield from self._release(s, self.decision.split_of(s))

    def _release(self, source: str, split: str) -> Iterator[tuple[str, object]]:
        for item in self._held.pop(source):
            yield split, item
