"""Turn command-line inputs (files, folders, globs, @lists) into a sorted list of (input, output) paths.

    expand_inputs(["a.wav", "music/", "speech/*.flac", "@todo.txt"])

Folders are searched recursively for files whose extension soundfile can read; a glob is expanded (with
`**` allowed); `@FILE` (or a `.txt` file) names one path per line (blank lines and `#` comments skipped).
Outputs mirror each input's path relative to the folder/glob root it came from, so `music/a/b.flac`
becomes `OUT/a/b.wav`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass

import soundfile as sf

from audiosr_jax.errors import UserError

__all__ = ["Job", "expand_inputs", "assign_outputs", "AUDIO_EXTENSIONS", "shard_for_host"]

AUDIO_EXTENSIONS = frozenset("." + ext.lower() for ext in sf.available_formats()) | {".oga", ".opus", ".aif"}


@dataclass(frozen=True)
class Job:
    input: str  # path of the audio file
    relative: str  # path below its root (used to name the output)
    output: str = ""


def _is_audio_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _walk(root: str) -> list[Job]:
    jobs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if _is_audio_name(name) and not name.startswith("."):
                path = os.path.join(dirpath, name)
                jobs.append(Job(path, os.path.relpath(path, root)))
    return jobs


def _read_list(path: str) -> list[str]:
    try:
        with open(path) as f:
            lines = [ln.strip() for ln in f]
    except OSError as e:
        raise UserError(f"{path}: cannot read the list of inputs: {e.strerror}") from None
    base = os.path.dirname(os.path.abspath(path))
    return [ln if os.path.isabs(ln) else os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]


def expand_inputs(specs: Iterable[str]) -> list[Job]:
    """Expand input specs into jobs (without outputs), de-duplicated, in a stable sorted order.

    A spec that matches nothing raises UserError naming it; a named file that is not audio is kept (it
    will fail on reading and be reported, so the user learns about it)."""
    jobs: dict[str, Job] = {}
    for spec in specs:
        if spec.startswith("@") or (spec.endswith(".txt") and os.path.isfile(spec)):
            found = [Job(p, os.path.basename(p)) for p in _read_list(spec.lstrip("@") if spec.startswith("@") else spec)]
        elif os.path.isdir(spec):
            found = _walk(spec)
        elif glob.has_magic(spec):
            root = spec.split("*")[0].split("?")[0].split("[")[0]
            root = root if root.endswith(os.sep) else os.path.dirname(root)
            found = [Job(p, os.path.relpath(p, root or ".")) for p in sorted(glob.glob(spec, recursive=True))
                     if os.path.isfile(p)]
        else:
            found = [Job(spec, os.path.basename(spec))]
        if not found:
            raise UserError(f"{spec}: matches no audio files")
        for job in found:
            jobs.setdefault(os.path.abspath(job.input), job)
    return sorted(jobs.values(), key=lambda j: (j.relative, j.input))


def assign_outputs(jobs: list[Job], output: str, extension: str = ".wav") -> list[Job]:
    """Give each job its output path. With one job and an `output` that has an audio extension, that file;
    otherwise `output` is a folder and each output mirrors the job's relative path with `extension`."""
    if len(jobs) == 1 and _is_audio_name(output) and not os.path.isdir(output):
        return [Job(jobs[0].input, jobs[0].relative, output)]
    out = [Job(j.input, j.relative, os.path.join(output, os.path.splitext(j.relative)[0] + extension)) for j in jobs]
    seen: dict[str, str] = {}
    for j in out:
        if j.output in seen:
            raise UserError(f"{j.input}: its output {j.output} would overwrite the output of {seen[j.output]}")
        seen[j.output] = j.input
    return out


def shard_for_host(jobs: list[Job], process_index: int, process_count: int) -> list[Job]:
    """This host's share of the jobs (round-robin over the sorted list, so every host sees a similar mix)."""
    return jobs[process_index::process_count]
