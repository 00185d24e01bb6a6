"""Preemption and faults of a training job on several processes: 2 real JAX processes × 2 fake CPU devices
(``python -m audiosr_jax.launch ... --multihost``, gloo collectives) training a tiny LDM, the UNet sharded
over ``fsdp`` across the processes (``mesh_dcn``), so each process writes and reads only its own shards.

* SIGTERM to ONE process: every process saves the same step and exits 0 (no hang); the rerun resumes there;
  the agreed stop alone (no training): a SIGTERM in the loop, and one before it (jax's preemption notifier);
* kill -9 of one process: the launcher stops the job; the rerun, whose process 1 reaches the step loop 40 s
  late (as when only process 0 finds the step in the persistent cache), resumes from the last complete
  checkpoint and ends with the parameters of an uninterrupted run (bit for bit: same layout, same batches);
* one tensor data file of the latest step truncated (a file only process 1 reads): every process falls back
  to the same earlier step, and the damaged step is set aside once, by process 0.

Every launcher run has ``--timeout`` (a hang fails the test, never CI). The runs share one persistent XLA
cache; this module is the children's entry point (``__main__``) and config file (``get_config``), so it can
let process 1 use process 0's cache entries (see :func:`_share_compilation_cache`).
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "fixtures" / "corpus_slice"
STEPS = 8
RUN_TIMEOUT_S = 300  # the launcher's --timeout for one run (the first one compiles)


def get_config(arg: str = ""):
    """ml_collections entry point (``--config=tests/test_multiprocess_faults.py``): the tiny LDM cut to one
    UNet level without attention, 2 processes × 2 devices as data 2 (in a process) × fsdp 2 (across them).
    The data set and the VAE come as overrides."""
    from audiosr_jax.configs import ldm

    c = ldm.get_config("tiny")
    c.model.unet.update(channel_mult=[1], attention_resolutions=[], extra_sa_layer=False)
    c.data.crop_samples = 7_680
    c.mesh = (("data", 2), ("fsdp", 1), ("tensor", 1))
    c.mesh_dcn = (("data", 1), ("fsdp", 2), ("tensor", 1))
    c.train.update(total_steps=STEPS, batch_size=4, log_every=1, eval_every=0, save_every=2, keep_checkpoints=2)
    return c


def _share_compilation_cache() -> None:
    """Let process 1 load the programs process 0 put in the persistent cache (these test runs only, to keep
    them short). On CPU jax 0.10 keys a cache entry with a topology fingerprint that differs per process, and
    only process 0 writes, so process 1 would compile every program in every run (minutes on 2 cores). The
    key here hashes the device ids instead, as jax falls back to for platforms without a fingerprint; the
    program is the same SPMD executable on every process."""
    from jax._src import cache_key

    cache_key._hash_accelerator_config = lambda hash_obj, accelerators: cache_key._hash_devices(hash_obj,
                                                                                                 accelerators)


def _compile_late(process: int, seconds: float) -> None:
    """Make the train step's compile (``Lowered.compile``, which the loop calls) take ``seconds`` longer on
    ``process``: what a resumed job sees when process 0 finds the step in the persistent cache and the other
    processes compile it."""
    import jax

    compile_ = jax.stages.Lowered.compile

    def late(self, *args, **kwargs):
        out = compile_(self, *args, **kwargs)
        if jax.process_index() == process:
            time.sleep(seconds)
        return out

    jax.stages.Lowered.compile = late


# ------------------------------------------------------------------------------------------------ helpers


def _start(workdir, dataset, vae_dir, cache_dir, log_path, *flags, late: str = "") -> subprocess.Popen:
    """Start the 2 × 2 training job in ``workdir`` (all output to ``log_path``); ``late`` "PROCESS:SECONDS":
    that process compiles the train step that much longer (:func:`_compile_late`)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               AUDIOSR_JAX_CACHE=str(cache_dir), AUDIOSR_JAX_TEST_LATE_COMPILE=late)
    args = [sys.executable, "-m", "audiosr_jax.launch", "--processes", "2", "--devices-per-process", "2",
            "--timeout", str(RUN_TIMEOUT_S), "--", str(Path(__file__).resolve()), "--multihost",
            f"--config={Path(__file__).resolve()}", f"--workdir={workdir}",
            f"--config.data.dataset_dir={dataset}", f"--config.ldm.vae_from={vae_dir}", *flags]
    with open(log_path, "w") as log:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log_path) -> tuple[int, str]:
    """(launcher exit status, its output) once it ends (the launcher's own --timeout bounds the wait)."""
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(log_path, newline="", errors="replace") as f:  # keep tqdm's "\r": a log line may follow one
        return rc, f.read()


def _run(*args, **kwargs) -> tuple[int, str]:
    return _finish(_start(*args, **kwargs), args[4])


def _children(launcher_pid: int) -> dict[int, int]:
    """{AUDIOSR_JAX_PROCESS_ID: pid} of the launcher's child processes (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ids = [e.split(b"=", 1)[1] for e in env if e.startswith(b"AUDIOSR_JAX_PROCESS_ID=")]
        if ids:
            out[int(ids[0])] = int(entry)
    return out


def _steps(workdir) -> list[int]:
    """The complete checkpoint steps (orbax renames a step's temporary directory once every process wrote)."""
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _wait_for_checkpoint(workdir, min_step: int, proc, timeout=RUN_TIMEOUT_S) -> bool:
    """Whether a checkpoint >= ``min_step`` appeared while the launcher was running."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if any(s >= min_step for s in _steps(workdir)):
            return True
        time.sleep(0.05)
    return False


def _per_process(pattern: str, text: str) -> dict[int, list[str]]:
    """{process: [the first group of every match of ``pattern`` in its "[i] " prefixed lines]}."""
    out: dict[int, list[str]] = {}
    for m in re.finditer(rf"^\[(\d+)\] .*?{pattern}", text, re.MULTILINE):
        out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


def _resumed_from(text: str) -> dict[int, list[int]]:
    return {p: [int(s) for s in v] for p, v in _per_process(r"resumed from step (\d+)", text).items()}


def _params(workdir) -> dict:
    from audiosr_jax.training.weights import read_trained_params

    return read_trained_params(str(workdir), "unet", prefer_ema=False)[0]


def _assert_same_params(a, b) -> None:
    import jax
    import numpy as np

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from audiosr_jax.data.segments import SegmentConfig, build_dataset

    return build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, tmp_path_factory.mktemp("tfds"),
                         config=SegmentConfig(segment_seconds=0.32, validation_fraction=0.3))


@pytest.fixture(scope="module")
def job(dataset, tiny_checkpoint_dir, tmp_path_factory):
    """The arguments every run shares before the log path: (dataset, VAE dir, one XLA cache for the module)."""
    return dataset, tiny_checkpoint_dir, tmp_path_factory.mktemp("xla_launch")


@pytest.fixture(scope="module")
def uninterrupted(job, tmp_path_factory):
    """A workdir trained by one uninterrupted 2-process run to STEPS."""
    wd = tmp_path_factory.mktemp("uninterrupted")
    t0 = time.monotonic()
    rc, out = _run(wd / "run", *job, wd / "log")
    assert rc == 0, out[-5000:]
    print(f"\nuninterrupted 2x2 run: {time.monotonic() - t0:.0f} s")
    assert _steps(wd / "run")[-1] == STEPS
    return wd / "run"


# ------------------------------------------------------------------------------------------------ tests

_AGREED_STOP = """
import os, signal, sys, time
from audiosr_jax.runtime import initialize_distributed

initialize_distributed()
import jax
from audiosr_jax.training.preemption import AgreedStop, StopFlag

late = jax.process_index() == 1
if late and sys.argv[1] == "start":
    os.kill(os.getpid(), signal.SIGTERM)  # before the loop: jax's preemption notifier catches it
time.sleep(3.0 if late else 0.0)  # a process that compiled for longer
t0 = time.monotonic()
with StopFlag() as flag, AgreedStop(flag) as stop:  # as the loop does; waits for every process
    waited = time.monotonic() - t0
    for step in range(1, 40):
        if late and step == 3 and sys.argv[1] == "loop":
            os.kill(os.getpid(), signal.SIGTERM)
        if stop(step):
            break
        time.sleep(0.1)  # a step
print(f"waited {waited:.1f} s; stopped after step {step}", flush=True)
"""


@pytest.mark.parametrize("when", ["loop", "start"])
def test_agreed_stop_makes_every_process_stop_after_the_same_step(tmp_path, when):
    """The stop itself, without training; process 0 first waits for the late process 1. loop: SIGTERM in
    process 1 before its check of step 3, both stop after step 4 (the all-reduce dispatched at step 3 is read
    at step 4). start: SIGTERM in process 1 before the loop (caught by jax's preemption notifier), both stop
    after the same step, jax's preemption sync point."""
    script = tmp_path / "agreed_stop.py"
    script.write_text(_AGREED_STOP)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "audiosr_jax.launch", "--processes", "2", "--devices-per-process",
                           "2", "--timeout", "120", "--", str(script), when], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = {int(m.group(1)): (float(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"^\[(\d)\] waited ([\d.]+) s; stopped after step (\d+)$", done.stdout, re.MULTILINE)}
    assert set(lines) == {0, 1} and lines[0][1] == lines[1][1] < 39, done.stdout
    if when == "loop":
        assert lines[0][1] == 4, lines
    assert lines[0][0] >= 2.0, lines  # the start barrier held process 0 back


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes(job, uninterrupted, tmp_path):
    """Before: the signalled process saved and left while the other entered the next step's collective (a
    hang until the launcher's timeout)."""
    wd = tmp_path / "run"
    proc = _start(wd, *job, tmp_path / "log1")
    try:
        reached = _wait_for_checkpoint(wd, 2, proc)
        pids = _children(proc.pid)
        assert reached and set(pids) == {0, 1}, (tmp_path / "log1").read_text()[-5000:]
        os.kill(pids[1], signal.SIGTERM)
    finally:
        rc, out = _finish(proc, tmp_path / "log1")
    assert rc == 0, out[-5000:]  # both processes exited 0, in time
    assert re.search(r"^\[1\] .*signal 15: saving a checkpoint", out, re.MULTILINE), out[-5000:]
    stopped = _per_process(r"stopped at step (\d+) on request", out)
    assert set(stopped) == {0, 1} and stopped[0] == stopped[1] and len(stopped[0]) == 1, (stopped, out[-5000:])
    saved = int(stopped[0][0])
    assert 2 <= saved < STEPS and _steps(wd)[-1] == saved
    iterators = sorted(p.name for p in (wd / "checkpoints" / str(saved) / "data_iter").iterdir())
    assert iterators == ["commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"], iterators

    rc, out = _run(wd, *job, tmp_path / "log2")
    assert rc == 0, out[-5000:]
    assert _resumed_from(out) == {0: [saved], 1: [saved]}, out[-5000:]
    assert _steps(wd)[-1] == STEPS
    _assert_same_params(_params(wd), _params(uninterrupted))


def test_kill9_of_one_process_then_resume_equals_uninterrupted(job, uninterrupted, tmp_path):
    """The rerun's process 1 reaches the step loop 40 s after process 0 (as when only process 0 finds the step
    in the persistent cache). Before: process 0's first step gave up after gloo's 30 s rendezvous timeout
    (DEADLINE_EXCEEDED) and the rerun failed; now every process first waits for the others."""
    wd = tmp_path / "run"
    proc = _start(wd, *job, tmp_path / "log1")
    try:
        reached = _wait_for_checkpoint(wd, 3, proc)
        time.sleep(random.Random(0).uniform(0.0, 0.5))  # somewhere inside a step or a save
        pids = _children(proc.pid)
        alive = proc.poll() is None
        assert reached and alive and set(pids) == {0, 1}, (tmp_path / "log1").read_text()[-5000:]
        os.kill(pids[1], signal.SIGKILL)
    finally:
        rc, out = _finish(proc, tmp_path / "log1")
    assert rc == 128 + signal.SIGKILL, out[-5000:]  # the launcher stopped the job, reporting the kill
    before = _steps(wd)
    assert before and 3 <= before[-1] < STEPS, (before, out[-5000:])

    rc, out = _run(wd, *job, tmp_path / "log2", late="1:40")
    assert rc == 0, out[-5000:]
    assert _resumed_from(out) == {0: [before[-1]], 1: [before[-1]]}, (before, out[-5000:])
    _assert_same_params(_params(wd), _params(uninterrupted))


def test_a_failed_shard_read_is_judged_by_its_cause():
    """orbax re-raises a failed read of one array shard as a bare Exception from the reader's error: a
    truncated file (tensorstore's OUT_OF_RANGE ValueError) is damage, an I/O error under it is not."""
    import errno

    from audiosr_jax.training.checkpoints import is_data_error

    def wrapped(cause):
        try:
            raise Exception("Encountered error while reading array index: (slice(0, 3, 1),).") from cause
        except Exception as e:
            return e

    assert is_data_error(wrapped(ValueError('OUT_OF_RANGE: Error reading "x/0.0" in OCDBT database: Requested '
                                            'byte range [355920, 364484) is not valid for value of size 357520')))
    assert not is_data_error(wrapped(OSError(errno.EIO, "Input/output error")))
    assert not is_data_error(wrapped(ValueError("UNAVAILABLE: Error reading local file")))
    assert not is_data_error(Exception("a bug"))


def test_truncated_latest_checkpoint_every_process_falls_back_to_the_same_step(job, uninterrupted, tmp_path):
    """One data file of the latest step, written (and read back) by process 1 only, cut in half. Before:
    process 1 set the step aside and waited at a barrier while process 0 had restored it and went on."""
    wd = tmp_path / "run"
    shutil.copytree(uninterrupted, wd)
    latest, previous = _steps(wd)[-1], _steps(wd)[-2]
    files = sorted((wd / "checkpoints" / str(latest) / "state" / "ocdbt.process_1" / "d").iterdir(),
                   key=lambda f: f.stat().st_size)
    data = files[-1].read_bytes()  # the largest: tensor values
    files[-1].write_bytes(data[: len(data) // 2])

    rc, out = _run(wd, *job, tmp_path / "log", f"--config.train.total_steps={STEPS + 1}", "--stop_after=1")
    assert rc == 0, out[-5000:]
    assert _resumed_from(out) == {0: [previous], 1: [previous]}, out[-5000:]
    moved = re.findall(rf"^\[(\d+)\] .*checkpoint \S+/{latest} is unreadable .*moved to", out, re.MULTILINE)
    assert moved == ["0"], out[-5000:]  # logged once, by the process that renames
    aside = sorted(p.name for p in (wd / "checkpoints").iterdir() if not p.name.isdigit())
    assert aside == [f"{latest}.corrupt"], aside
    assert _steps(wd) == [previous, previous + 1]


if __name__ == "__main__":  # a child of the launcher: train with this module's config
    _share_compilation_cache()
    if os.environ.get("AUDIOSR_JAX_TEST_LATE_COMPILE"):
        process, seconds = os.environ["AUDIOSR_JAX_TEST_LATE_COMPILE"].split(":")
        _compile_late(int(process), float(seconds))
    from audiosr_jax.cli.train import main

    sys.exit(main())
