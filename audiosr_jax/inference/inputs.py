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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import soundfile as sf

from audiosr_jax.errors import UserError

__all__ = [
    "AUDIO_EXTENSIONS",
    "Job",
    "Share",
    "assign_outputs",
    "check_outputs_are_not_inputs",
    "expand_inputs",
    "share_windows",
]

AUDIO_EXTENSIONS = frozenset("." + ext.lower() for ext in sf.available_formats()) | {".oga", ".opus", ".aif"}


@dataclass(frozen=True)
class Job:
    input: str  # path of the audio file
    relative: str  # path below its root (used to name the output)
    output: str = ""


def _is_audio_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def _walk(root: str, exclude: str | None = None) -> list[Job]:
    jobs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if exclude:  # the run's own output folder inside the input tree: never read back as input
            dirnames[:] = [d for d in dirnames if _real(os.path.join(dirpath, d)) != exclude]
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if _is_audio_name(name) and not name.startswith(".") and _real(path) != exclude:
                jobs.append(Job(path, os.path.relpath(path, root)))
    return jobs


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _read_list(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read the list of inputs: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:  # e.g. an audio file given as @list
        raise UserError(f"{path}: not a text list of input paths (binary data); give one path per line")
    lines = [ln.strip() for ln in text.splitlines()]
    base = os.path.dirname(os.path.abspath(path))
    return [ln if os.path.isabs(ln) else os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]


def expand_inputs(specs: Iterable[str], exclude: str | None = None) -> list[Job]:
    """Expand input specs into jobs (without outputs), de-duplicated, in a stable sorted order.

    A path that exists is taken as it is (a folder is walked, a file is one input) before any list or glob
    expansion; then `@FILE` or `FILE.txt` is a list, and a spec with `*?[` a glob. `exclude`: the run's
    output path (file or folder), never taken as an input (a rerun must not read its own outputs back).
    A spec that matches nothing raises UserError naming it; a named file that is not audio is kept (it
    will fail on reading and be reported, so the user learns about it)."""
    exclude = _real(exclude) if exclude else None
    jobs: dict[str, Job] = {}
    for spec in specs:
        is_list = spec.startswith("@") or (spec.endswith(".txt") and os.path.isfile(spec))
        if os.path.isdir(spec):
            found = _walk(spec, exclude)
        elif os.path.exists(spec) and not spec.endswith(".txt"):
            found = [Job(spec, os.path.basename(spec))]
        elif is_list:
            found = [Job(p, os.path.basename(p)) for p in _read_list(spec.removeprefix("@"))]
        elif glob.has_magic(spec):
            root = spec.split("*")[0].split("?")[0].split("[")[0]
            root = root if root.endswith(os.sep) else os.path.dirname(root)
            found = [Job(p, os.path.relpath(p, root or ".")) for p in sorted(glob.glob(spec, recursive=True))
                     if os.path.isfile(p) and _real(p) != exclude
                     and not (exclude and _real(p).startswith(exclude + os.sep))]
        else:
            found = [Job(spec, os.path.basename(spec))]
        if not found:
            raise UserError(f"{spec}: matches no audio files")
        for job in found:
            jobs.setdefault(os.path.abspath(job.input), job)
    return sorted(jobs.values(), key=lambda j: (j.relative, j.input))


def check_outputs_are_not_inputs(jobs: list[Job], specs: Iterable[str], output: str) -> None:
    """Refuse (one-line UserError) a run whose output is, or would overwrite, one of its inputs: an output
    path that is an input file, or an output folder that is itself an input folder (outputs would mix with
    the originals and be read back as inputs on a rerun)."""
    out = _real(output)
    for spec in specs:
        if os.path.isdir(spec) and _real(spec) == out:
            raise UserError(f"{output}: the output folder is the input folder {spec}; outputs would mix with the "
                            "originals. Choose another output folder (one inside the inputs is fine)")
    inputs = {_real(j.input): j.input for j in jobs}
    for j in jobs:
        if _real(j.output) in inputs or (os.path.exists(j.output) and os.path.exists(j.input)
                                         and os.path.samefile(j.output, j.input)):
            raise UserError(f"{j.output}: this output would overwrite the input {inputs.get(_real(j.output), j.input)}; "
                            "choose another output")


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


@dataclass(frozen=True)
class Share:
    """Windows [start, stop) of job `index` (every channel of them), computed by process `process`."""

    index: int
    start: int
    stop: int
    process: int


def share_windows(windows: Sequence[int], costs: Sequence[int], process_count: int) -> list[Share]:
    """Share a run's (job, window) units out over `process_count` processes (multi-host sampling).

    In: per job, its number of windows and the cost of one window (an integer, e.g. channels × window
    length in 5.12 s segments). Out: contiguous runs of one job's windows, in job order. Each process gets
    one contiguous stretch of the units, of about equal total cost: a unit goes to the process whose
    equal-cost slice holds its midpoint (the lower one on a tie). So a long file is split by window over
    several processes and a short one stays on one; with more processes than units some get none. Integer
    arithmetic only: every process computes the same shares.
    """
    total = sum(n * c for n, c in zip(windows, costs))
    shares: list[Share] = []
    done = 0
    for index, (n, cost) in enumerate(zip(windows, costs)):
        for w in range(n):
            process = min(process_count - 1, (2 * done + cost - 1) * process_count // (2 * total))
            done += cost
            last = shares[-1] if shares else None
            if last is not None and (last.index, last.process, last.stop) == (index, process, w):
                shares[-1] = Share(index, last.start, w + 1, process)
            else:
                shares.append(Share(index, w, w + 1, process))
    return shares
