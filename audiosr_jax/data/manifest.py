"""Source manifests: a CSV, JSON Lines or JSON file listing audio files, one per row, instead of a folder.

Columns (CSV header / JSON keys; others are ignored):

* ``path`` (or ``uri``): a local path (relative paths are relative to the manifest's folder) or a URI
  (``gs://``, ``s3://``, ``file://``, ...: anything :mod:`etils.epath` opens);
* ``domain``: ``speech``, ``music`` or ``effects``;
* ``licence`` (or ``license``): free text, copied to the build report;
* ``bandwidth_hz`` (or ``bandwidth``), optional: a declared bandwidth in Hz. The builder measures every
  file anyway and stores the lower of the two.

``.json`` is read as the corpus builder's ``manifest.json`` (its ``clips`` list has these keys), so
``--manifest out/corpus/manifest.json`` builds the corpus ``data/build_corpus.py`` wrote.

Each row's *source name* (the ``source`` feature, the split hash and the example keys use it) is
``<domain>/<path relative to the manifest's folder>``, without repeating the domain when the relative path
already starts with it (``music/a.flac`` in a manifest next to ``music/`` is ``music/a.flac``, the name a
``--corpus`` build gives the same file). A URI outside that folder is named ``<domain>/<scheme>/<rest>``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import PurePosixPath

from audiosr_jax.data.segment_config import DatasetError
from audiosr_jax.paths import is_remote, scheme
from audiosr_jax.paths import resolve as resolve_path


class ManifestError(DatasetError):
    """A manifest cannot be read or has a bad row (names the manifest and the row)."""


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One row: ``location`` is what soundfile or epath opens (a local path or a URI), ``source`` its name."""

    domain: str
    location: str
    source: str
    licence: str = ""
    bandwidth_hz: float | None = None


def read_manifest(path, domains) -> list[ManifestEntry]:
    """Rows of a ``.csv`` / ``.jsonl`` / ``.json`` manifest (local path or URI) in file order.

    ``domains``: the allowed domain names. Raises ManifestError (one line) for a missing or unreadable file,
    an unknown format, a row without path or domain, an unknown domain or a bad bandwidth."""
    p = resolve_path(path)
    try:
        text = p.read_text()
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e})") from None
    suffix = p.suffix.lower()
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    elif suffix == ".jsonl":
        rows = [_json_row(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".json":
        rows = _json_clips(path, text)
    else:
        raise ManifestError(f"{path}: a manifest is .csv, .jsonl or .json (got {suffix or 'no extension'})")
    base = p.parent
    return [_entry(path, base, n, row, domains) for n, row in enumerate(rows, 1)]


def _json_row(path, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise ManifestError(f"{path}: line {n} is not JSON ({e})") from None
    if not isinstance(row, dict):
        raise ManifestError(f"{path}: line {n} is not a JSON object")
    return row


def _json_clips(path, text: str) -> list[dict]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ManifestError(f"{path}: not JSON ({e})") from None
    clips = doc.get("clips") if isinstance(doc, dict) else doc
    if not isinstance(clips, list) or not all(isinstance(c, dict) for c in clips):
        raise ManifestError(f"{path}: a .json manifest is a list of objects or has one under 'clips'")
    return clips


def _entry(path, base, n: int, row: dict, domains) -> ManifestEntry:
    where = f"{path}: row {n}"
    location = str(row.get("path") or row.get("uri") or "").strip()
    domain = str(row.get("domain") or "").strip()
    if not location or not domain:
        raise ManifestError(f"{where}: needs 'path' (or 'uri') and 'domain'")
    if domain not in domains:
        raise ManifestError(f"{where}: unknown domain {domain!r} (choose from {', '.join(domains)})")
    licence = str(row.get("licence") or row.get("license") or "").strip()
    return ManifestEntry(domain=domain, location=_location(base, location), source=_source(base, domain, location),
                         licence=licence, bandwidth_hz=_bandwidth(where, row))


def _bandwidth(where: str, row: dict) -> float | None:
    raw = row.get("bandwidth_hz", row.get("bandwidth"))
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        bw = float(raw)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: bandwidth {raw!r} is not a number (Hz)") from None
    if not math.isfinite(bw) or bw <= 0:
        raise ManifestError(f"{where}: bandwidth must be > 0 Hz (got {raw!r})")
    return bw


def _location(base, location: str) -> str:
    """A remote URI as given; a ``file://`` URI as its local path; a plain path made absolute against the
    manifest's folder (a local one, or a URI)."""
    if scheme(location) == "file":
        return os.fspath(resolve_path(location))
    if scheme(location) is not None or os.path.isabs(location):
        return location
    return os.fspath(base / location)


def _source(base, domain: str, location: str) -> str:
    rel = _relative_name(base, location)
    parts = PurePosixPath(rel).parts
    return rel if parts and parts[0] == domain else f"{domain}/{rel}"


def _relative_name(base, location: str) -> str:
    if scheme(location) is None and not os.path.isabs(location):
        return PurePosixPath(*PurePosixPath(location.replace(os.sep, "/")).parts).as_posix().removeprefix("./")
    full = location if is_remote(location) else os.fspath(resolve_path(location))
    prefix = os.fspath(base).rstrip("/") + "/"
    if full.startswith(prefix):
        return full[len(prefix):]
    s = scheme(full)
    rest = full.split("://", 1)[1] if s else full
    return f"{s}/{rest.lstrip('/')}" if s else rest.lstrip("/")
