"""The list of files to build from: folders (searched recursively, sorted) and manifests, in one numbered list.

Nothing here opens an audio file: the list is made from folder listings and manifest rows only, so it costs
the same whether the build then runs in one process or on a Beam cluster.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from audiosr_jax.data.manifest import read_manifest
from audiosr_jax.data.segment_config import AUDIO_EXTENSIONS, DOMAINS, DatasetError


@dataclasses.dataclass(frozen=True)
class Input:
    """One file to build from. ``location``: a local path or a URI; ``source``: its stored name
    (``<domain>/<relative path>``); ``index``: its position in the input list (orders the report)."""

    domain: str
    location: str
    source: str
    index: int = 0
    licence: str | None = None  # None: not from a manifest
    declared_bandwidth_hz: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Input:
        return cls(**dict(d))


def normalize_sources(sources, allow_empty: bool = False) -> list[tuple[str, Path]]:
    """``{domain: [path, ...]}`` or ``[(domain, path), ...]`` (or one path) -> list of (domain, Path).

    Paths are folders (searched recursively) or single files. Raises DatasetError on an unknown domain, and on
    no source at all unless ``allow_empty`` (manifests give the files)."""
    if isinstance(sources, Mapping):
        pairs = []
        for domain, paths in sources.items():
            if isinstance(paths, (str, os.PathLike)):
                paths = [paths]
            pairs += [(domain, p) for p in paths]
    else:
        pairs = list(sources or ())
    out = []
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DatasetError(f"a source must be (domain, path), got {item!r}")
        domain, path = item
        if domain not in DOMAINS:
            raise DatasetError(f"unknown domain {domain!r} for {os.fspath(path)} (choose from {', '.join(DOMAINS)})")
        out.append((str(domain), Path(path)))
    if not out and not allow_empty:
        raise DatasetError("no sources given: pass at least one DOMAIN=FOLDER")
    return out


def discover(pairs: Sequence[tuple[str, Path]]) -> tuple[list[Input], list[str]]:
    """Audio files of folder sources in sorted order -> (inputs, ignored non-audio files). Raises DatasetError
    for a missing folder or a folder without any audio file."""
    by_domain: dict[str, int] = {}
    for domain, _ in pairs:
        by_domain[domain] = by_domain.get(domain, 0) + 1
    inputs: list[Input] = []
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
                audio.append(Input(domain, str(p), f"{prefix}/{p.relative_to(base).as_posix()}"))
            else:
                ignored.append(str(p))
        if not audio:
            what = "is not an audio file" if root.is_file() else "contains no audio files"
            raise DatasetError(
                f"{root}: {what} ({domain} source; looked for {', '.join(sorted(AUDIO_EXTENSIONS)[:8])}, ...)")
        inputs += audio
    return inputs, ignored


def from_manifests(manifests: Sequence) -> list[Input]:
    """Every row of every manifest, in order (see :mod:`audiosr_jax.data.manifest`)."""
    out = []
    for m in manifests:
        rows = read_manifest(m, DOMAINS)
        if not rows:
            raise DatasetError(f"{m}: the manifest lists no file")
        out += [Input(r.domain, r.location, r.source, licence=r.licence, declared_bandwidth_hz=r.bandwidth_hz)
                for r in rows]
    return out


def collect_inputs(pairs: Sequence[tuple[str, Path]], manifests: Sequence = ()) -> tuple[list[Input], list[str]]:
    """Folders then manifests as one numbered list -> (inputs, ignored non-audio files). Raises DatasetError when
    two files get the same source name, or when there is no file at all."""
    inputs, ignored = discover(pairs)
    inputs += from_manifests(manifests)
    if not inputs:
        raise DatasetError("nothing to build: give a source folder or a manifest")
    seen: dict[str, str] = {}
    for inp in inputs:
        if inp.source in seen:
            raise DatasetError(f"{inp.location} and {seen[inp.source]} map to the same source name {inp.source}")
        seen[inp.source] = inp.location
    return [dataclasses.replace(inp, index=i) for i, inp in enumerate(inputs)], ignored
