"""A Beam build straight onto an object store (``gs://``, ``s3://``): where Dataflow's workers write.

The layout and the guarantees are those of the local build: the build goes to a hidden staging prefix next to
the dataset (``<data_dir>/.audio_segments-build-<id>/``), and only a finished build replaces the version dir.
An object store has no folder rename, so the swap moves objects one by one: the previous build (only a build
of ours, and only with ``overwrite``) is moved aside first, the new one moved in with ``dataset_info.json``
last (a reader sees either no build or a complete one), and the old one is deleted only then; if moving in
fails, the old objects go back. Everything goes through :mod:`etils.epath` (``gs://`` needs ``gcsfs``: the
``gcs`` extra), so the same code runs on a local folder, which is how it is tested.
"""

from __future__ import annotations

import json
import os
import uuid

from etils import epath

from audiosr_jax.data.segment_config import REPORT_NAME, DatasetError

_LAST = "dataset_info.json"  # moved in last: TFDS readers need it, so its presence marks a complete build


def is_our_build(path: epath.Path, name: str) -> bool:
    """Whether ``path`` holds a finished build of the builder ``name`` (safe to replace)."""
    try:
        info = json.loads((path / _LAST).read_text())
        report = json.loads((path / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(report, dict) and info.get("name") == name == report.get("dataset")


def build(builder_factory, data_dir, rel: str, name: str, overwrite: bool, prepare) -> epath.Path:
    """Stage, build and swap in. ``builder_factory(staging_dir) -> builder``; ``prepare(builder, staging_dir)``
    runs its ``download_and_prepare``. Returns the version dir ``<data_dir>/<rel>``."""
    root = epath.Path(os.fspath(data_dir))
    version_dir = root / rel
    if version_dir.exists():
        if not overwrite:
            raise DatasetError(f"{version_dir} already exists; pass overwrite=True (--overwrite) to rebuild it")
        if not is_our_build(version_dir, name):
            raise DatasetError(f"{version_dir}: not a build of {name} (no dataset_info.json and {REPORT_NAME} of "
                               f"this builder); refusing to replace it, move it away first")
    staging = root / f".{name}-build-{uuid.uuid4().hex[:12]}"
    try:
        builder = builder_factory(staging)
        prepare(builder, staging)
        swap_in(epath.Path(os.fspath(builder.data_dir)), version_dir, staging / "previous")
        metadata = staging / name / ".config" / "metadata.json"
        if metadata.exists():
            _move(metadata, root / name / ".config" / "metadata.json")
    finally:
        if staging.exists():
            staging.rmtree()
    return version_dir


def swap_in(new: epath.Path, old: epath.Path, aside: epath.Path) -> None:
    """Replace the folder ``old`` by ``new`` object by object (``aside`` holds the previous objects until the
    new ones are all in; on failure they go back)."""
    had_old = old.exists()
    if had_old:
        _move_tree(old, aside)
    try:
        _move_tree(new, old)
    except BaseException:
        if old.exists():
            old.rmtree()
        if had_old:
            _move_tree(aside, old)
        raise


def _files(folder: epath.Path):
    """Every file under ``folder`` (epath has no recursive glob on object stores)."""
    for p in folder.iterdir():
        if p.is_dir():
            yield from _files(p)
        else:
            yield p


def _move_tree(src: epath.Path, dst: epath.Path) -> None:
    files = sorted(_files(src), key=lambda p: (p.name == _LAST, os.fspath(p)))
    for f in files:
        _move(f, dst / f.relative_to(src))
    if src.exists():
        src.rmtree()


def _move(src: epath.Path, dst: epath.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.replace(dst)  # overwrites: only TFDS's .config/metadata.json is ever there already
