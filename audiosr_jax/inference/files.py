"""Super-resolve files: inputs → checked plan → batch engine → outputs and a report (what sample.py runs).

    plan = plan_files(["music/", "@todo.txt"], "out/")      # every refusal before any model is loaded
    outcome = run_files(weights, plan, BatchConfig(...))     # outputs written, report merged and written

Nothing is lost: an output that is, or would overwrite, an input is refused; the run's own output folder
is never read back as input; the output and report locations are probed for writing up front; a full or
read-only disk stops the run with one line (finished outputs are complete, nothing partial is left); a
rerun keeps what the earlier report knew of the files it skips.

In a multi-process job (``sample.py --multihost``: `jax.process_count()` > 1) every process calls
`run_files` with the same plan: `batch.run_shared` shares the files' windows out over the processes and
brings every result to every process with a jax all-gather (no shared filesystem needed, nothing left
on disk but the outputs); process 0 alone writes the report, once, for the whole run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

from audiosr_jax.errors import UserError
from audiosr_jax.inference.inputs import (
    Job,
    assign_outputs,
    check_outputs_are_not_inputs,
    expand_inputs,
)

__all__ = ["FilePlan", "FilesOutcome", "plan_files", "run_files"]


@dataclasses.dataclass(frozen=True)
class FilePlan:
    """What a run will do. jobs: (input, output) pairs in order; single: one input written to the file
    `output` (else `output` is a folder mirroring the inputs); report: the report path (None when single)."""

    jobs: list[Job]
    output: str
    single: bool
    report: str | None


@dataclasses.dataclass
class FilesOutcome:
    """results: one FileResult per job (the whole run's, on every process of a multi-process job); stopped:
    why the run stopped early ("" if it did not); report: the report written (None if single, if it could not
    be written, or on a process other than 0); seconds: wall time; process: (index, count) of this process;
    share: what this process did in a multi-process job ("" in a one-process run)."""

    results: list
    stopped: str = ""
    report: str | None = None
    report_error: str = ""
    seconds: float = 0.0
    process: tuple[int, int] = (0, 1)
    share: str = ""


def plan_files(inputs: list[str], output: str, *, overwrite: bool = False, report: str | None = None,
               max_channels: int = 2) -> FilePlan:
    """Expand `inputs` (files, folders, globs, @lists) and pair them with outputs under `output`, refusing
    (one-line UserError) whatever would lose data or fail only after the compute: an output that is an input,
    an existing single output without `overwrite`, an unknown output format, an unwritable location, and a
    single input that cannot be read."""
    jobs = assign_outputs(expand_inputs(inputs, exclude=output), output)
    check_outputs_are_not_inputs(jobs, inputs, output)
    single = len(jobs) == 1 and jobs[0].output == output
    if single:
        from audiosr_jax.audio import load_audio

        _check_output_file(jobs[0].output, overwrite)
        _check_writable(os.path.dirname(os.path.abspath(output)), "output")
        load_audio(jobs[0].input, max_channels=max_channels)  # bad audio fails before any model is loaded
        return FilePlan(jobs, output, True, None)
    report = report or os.path.join(output, "report.json")
    _check_writable(output, "outputs")
    _check_writable(os.path.dirname(os.path.abspath(report)), "report")
    return FilePlan(jobs, output, False, report)


def run_files(weights, plan: FilePlan, cfg, mesh=None, progress: bool = True) -> FilesOutcome:
    """Run the batch engine over `plan` (`batch.run_batch`; `batch.run_shared` in a multi-process job) and
    write the report (merged with an earlier one at the same path; process 0 only). A single-file plan always
    (re)writes its output, which `plan_files` checked."""
    import jax

    from audiosr_jax.inference.batch import (
        BatchStopped,
        remove_stale_partials,
        run_batch,
        run_shared,
    )

    if plan.single:  # one file: a live bar of sampler steps instead of a files bar
        cfg = dataclasses.replace(cfg, overwrite=True, options=cfg.options._replace(progress=progress))
    start = time.perf_counter()
    outcome = FilesOutcome([], process=(jax.process_index(), jax.process_count()))
    progress = progress and not plan.single
    if jax.process_count() > 1:
        shared = run_shared(weights, plan.jobs, cfg, mesh=mesh, progress=progress)
        outcome.results, outcome.stopped = shared.results, shared.stopped
        outcome.share = (f"process {jax.process_index()} of {jax.process_count()}: {shared.windows} window(s) "
                         f"sampled, {shared.written} file(s) written")
    else:
        try:
            outcome.results = run_batch(weights, plan.jobs, cfg, mesh=mesh, progress=progress)
        except BatchStopped as e:
            outcome.results, outcome.stopped = e.results, str(e)
    outcome.seconds = time.perf_counter() - start
    if plan.report is not None and jax.process_index() == 0:
        remove_stale_partials([plan.report])
        _write_report(plan.report, outcome)
    return outcome


def _write_report(path: str, outcome: FilesOutcome) -> None:
    """Write outcome.results to the report at `path`, merged with what an earlier report there knew; sets
    outcome.report, or outcome.report_error (one line) when it cannot be written."""
    from audiosr_jax.inference.batch import merge_previous_report, write_report

    try:
        write_report(merge_previous_report(outcome.results, path), path)
        outcome.report = path
    except OSError as e:
        outcome.report_error = f"{path}: cannot write the report: {e.strerror or e}"


def _check_output_file(path: str, overwrite: bool) -> None:
    import soundfile as sf

    ext = os.path.splitext(path)[1].lstrip(".").upper()
    if ext not in sf.available_formats():
        raise UserError(f"{path}: unknown output format {ext or '(no extension)'!r}; use .wav, .flac or .ogg")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path}: already exists (use --overwrite)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: output directory {parent} does not exist")


def _check_writable(folder: str, what: str) -> None:
    """Create `folder` if needed and write a probe file there, so an unwritable or full location is found
    before any compute (one-line UserError naming it and the cause)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".audiosr-jax-probe-") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"{folder}: cannot write the {what} there: {e.strerror or e}") from None
