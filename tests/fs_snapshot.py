"""What the tests use to prove that a run left a folder alone (imported as ``from fs_snapshot import ...``;
pytest puts tests/ on sys.path)."""

from __future__ import annotations

import hashlib
import os


def tree_snapshot(root) -> dict:
    """{relative path: (size, mtime_ns, sha1 hex)} of every file under ``root`` and {relative path: "dir"} of
    every folder: two equal snapshots mean nothing was added, removed, rewritten or touched in between."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            stat = os.stat(path)
            with open(path, "rb") as fh:
                digest = hashlib.sha1(fh.read()).hexdigest()
            out[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns, digest)
    return out
