"""sample.py --multihost through the real launcher (2 processes × 2 CPU devices): a long file's windows are
shared out over the processes, each output is written once and equals a one-process run's bit for bit, one
report for the whole run, nothing left behind; one input with two processes; --low-memory with processes
that sample different numbers of batches.

Every launch is bounded by the launcher's --timeout (no pytest-timeout here): a hang, e.g. a barrier that
only one process reaches, fails the test with status 124 instead of blocking CI.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosr_jax.inference.inputs import Share, share_windows

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 300  # the launcher's --timeout; several times what a run takes on a loaded 2-core machine
SAMPLE = ["--steps", "2", "--seed", "7", "--no-progress"]


def _signal(sr, seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _launch(processes, args):
    """sample.py ARGS as `processes` JAX processes of 2 CPU devices each; (returncode, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "audiosr_jax.launch", "--processes", str(processes),
                           "--devices-per-process", "2", "--timeout", str(LIMIT_S), "--", "sample.py", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=LIMIT_S + 60, check=False)
    print(f"{processes} process(es): {time.monotonic() - start:.1f} s")
    return done.returncode, done.stdout, done.stderr


def _hidden(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if f.startswith("."))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two short files (one 5.12 s window each) and one of 11 s (two 10.24 s windows), sorted so that the
    long one is shared: a, b and the long file's window 0 on process 0, its window 1 on process 1."""
    d = tmp_path_factory.mktemp("in")
    sf.write(d / "a.wav", _signal(16000, 0.5, 0), 16000)
    sf.write(d / "b.flac", _signal(22050, 0.7, 1), 22050)
    sf.write(d / "long.wav", _signal(16000, 11.0, 2), 16000)
    return d


@pytest.fixture(scope="module")
def reference(inputs, tiny_checkpoint_dir, tmp_path_factory):
    """The one-process run of the same inputs and seed on the same local mesh (2 devices): {name: samples}.
    Launched like the others, so the 2-process run finds its programs in the shared compilation cache."""
    out = tmp_path_factory.mktemp("reference")
    rc, stdout, err = _launch(1, [str(inputs), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, *SAMPLE])
    assert rc == 0 and "3 written, 0 skipped, 0 failed" in stdout, err[-3000:]
    return {name: sf.read(out / name)[0] for name in ("a.wav", "b.wav", "long.wav")}


def test_two_processes_share_a_long_file_and_write_each_output_once(inputs, reference, tiny_checkpoint_dir,
                                                                    tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.wav.partial-stale.wav").write_bytes(b"what a killed run left")  # a's owner removes it
    in_flight = out / ".elsewhere.wav.partial-live.wav"  # another process's (or run's) write: must survive
    in_flight.write_bytes(b"being written")
    rc, stdout, err = _launch(2, ["--multihost", str(inputs), "-o", str(out), "--checkpoint", tiny_checkpoint_dir,
                                  *SAMPLE])
    assert rc == 0, err[-3000:]
    lines = stdout.splitlines()
    # Process 1 sampled one window and wrote nothing: window 1 of the long file, which process 0 assembled.
    assert "[0] process 0 of 2: 3 window(s) sampled, 3 file(s) written" in lines, stdout
    assert "[1] process 1 of 2: 1 window(s) sampled, 0 file(s) written" in lines, stdout
    summary = [ln for ln in lines if "written, " in ln and "skipped" in ln]
    assert len(summary) == 1 and summary[0].startswith("[0] 3 written, 0 skipped, 0 failed"), stdout
    for name, want in reference.items():
        np.testing.assert_array_equal(sf.read(out / name)[0], want, err_msg=name)
    report = json.loads((out / "report.json").read_text())
    assert sorted(os.path.basename(r["input"]) for r in report) == ["a.wav", "b.flac", "long.wav"]
    assert all(r["status"] == "ok" for r in report) and {r["windows"] for r in report} == {1, 2}
    assert in_flight.exists()
    in_flight.unlink()
    assert _hidden(tmp_path) == [] and _hidden(inputs) == []  # no shard, partial or probe file left


def test_one_input_on_two_processes_with_low_memory(inputs, reference, tiny_checkpoint_dir, tmp_path):
    """Process 0 samples the one window (one batch, each re-reading the weights), process 1 none: a
    per-batch barrier over every process would hang here (status 124)."""
    out = tmp_path / "a48.wav"
    rc, stdout, err = _launch(2, ["--multihost", str(inputs / "a.wav"), "-o", str(out), "--checkpoint",
                                  tiny_checkpoint_dir, "--low-memory", *SAMPLE])
    assert rc == 0, err[-3000:]
    lines = stdout.splitlines()
    assert "[1] process 1 of 2: 0 window(s) sampled, 0 file(s) written" in lines, stdout
    summary = [ln for ln in lines if " -> " in ln]
    assert len(summary) == 1 and summary[0].startswith("[0] "), stdout  # the one summary, process 0's
    # stage by stage: the same maths in four programs, equal up to float rounding and the 24-bit file
    np.testing.assert_allclose(sf.read(out)[0], reference["a.wav"], atol=1e-5)
    assert _hidden(tmp_path) == []


def test_share_windows_gives_every_unit_once_in_contiguous_balanced_stretches():
    windows, costs = [1, 1, 2, 7, 1], [1, 2, 2, 4, 1]
    for processes in (1, 2, 3, 8, 40):
        shares = share_windows(windows, costs, processes)
        units = [(s.index, w) for s in shares for w in range(s.start, s.stop)]
        assert units == [(j, w) for j, n in enumerate(windows) for w in range(n)]  # each once, in order
        owners = [s.process for s in shares]
        assert owners == sorted(owners) and max(owners) < processes  # one contiguous stretch per process
        load = np.bincount(owners, [(s.stop - s.start) * costs[s.index] for s in shares], minlength=processes)
        assert load.max() <= sum(n * c for n, c in zip(windows, costs)) / processes + max(costs)
    assert share_windows([1], [1], 2) == [Share(0, 0, 1, 0)]  # more processes than work: process 1 has none
    assert share_windows([2], [2], 2) == [Share(0, 0, 1, 0), Share(0, 1, 2, 1)]  # one long file, split
