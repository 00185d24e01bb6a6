"""The local multi-process launcher: real JAX processes joined into one job, failure handling, flags.

Every child process is bounded: the launcher gets --timeout, and each subprocess call a timeout after which
it is killed (its children die with it: the launcher sets PR_SET_PDEATHSIG).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from audiosr_jax import launch as launcher
from audiosr_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _run_cli(args, timeout):
    """`python -m audiosr_jax.launch ARGS` from the repo root; (returncode, stdout, stderr, seconds)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "audiosr_jax.launch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


_COLLECTIVE = """
import numpy as np
from audiosr_jax.runtime import initialize_distributed

initialize_distributed()  # what train/sample --multihost call
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

assert jax.process_count() == 2, jax.process_count()
assert jax.device_count() == 4, jax.device_count()
assert jax.local_device_count() == 2, jax.local_device_count()
x = (np.arange(8 * 3, dtype=np.float32).reshape(8, 3) - 5.0) ** 2
mesh = Mesh(np.array(jax.devices()), ("d",))
# Each process fills only its own two shards: the sum needs the other process's half.
g = jax.make_array_from_callback(x.shape, NamedSharding(mesh, P("d")), lambda idx: x[idx])
assert len(g.addressable_shards) == 2
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(g)
print(f"sum={float(total)!r}")
"""


def test_two_processes_run_a_cross_process_sum(tmp_path):
    script = tmp_path / "collective.py"
    script.write_text(_COLLECTIVE)
    expected = float(((np.arange(24, dtype=np.float64) - 5.0) ** 2).sum())
    rc, out, err, seconds = _run_cli(["--processes", "2", "--devices-per-process", "2", "--timeout", "120",
                                      "--", str(script)], timeout=150)
    assert rc == 0, err[-3000:]
    lines = out.splitlines()
    for i in (0, 1):
        assert f"[{i}] sum={expected!r}" in lines, (out, err[-3000:])
    # Every child line is prefixed (the gloo banner on stderr too).
    assert all(re.match(r"\[[01]\] ", line) for line in lines), out
    print(f"2x2 collective job: {seconds:.1f} s")


def test_a_failing_process_stops_the_others_and_sets_the_status(tmp_path, capfd):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['AUDIOSR_JAX_PROCESS_ID'] == '1':\n"
                      "    print('failing', flush=True)\n"
                      "    time.sleep(0.5)\n"
                      "    sys.exit(3)\n"
                      "print('sleeping', flush=True)\n"
                      "time.sleep(120)\n")
    start = time.monotonic()
    # timeout: a bound for the test only (a broken kill-on-failure returns 124 after 40 s, not 3).
    rc = launcher.launch([str(script)], processes=2, devices_per_process=1, timeout=40)
    seconds = time.monotonic() - start
    out, err = capfd.readouterr()
    assert rc == 3, err
    assert seconds < 15, f"the sleeper was not stopped promptly: {seconds:.1f} s"
    assert "[1] failing" in out.splitlines() and "[0] sleeping" in out.splitlines(), out
    assert "process 1 exited with status 3" in err


def test_timeout_kills_a_hanging_job(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\nprint('hanging', flush=True)\ntime.sleep(600)\n")
    rc, _out, err, seconds = _run_cli(["--processes", "2", "--timeout", "2", "--", str(script)], timeout=60)
    assert rc == 124, err
    assert seconds < 20, seconds
    assert "timed out after 2 s" in err


def test_signals_to_the_launcher_reach_every_process(tmp_path):
    script = tmp_path / "trap.py"
    script.write_text("import signal, sys, time\n"
                      "def bye(signum, frame):\n"
                      "    print('got', signal.Signals(signum).name, flush=True)\n"
                      "    sys.exit(0)\n"
                      "signal.signal(signal.SIGTERM, bye)\n"
                      "print('ready', flush=True)\n"
                      "time.sleep(120)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "audiosr_jax.launch", "--processes", "2", "--timeout", "60",
                             "--", str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while sum(line.endswith("ready\n") for line in lines) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    assert "[0] got SIGTERM\n" in lines and "[1] got SIGTERM\n" in lines, lines
    assert rc == 128 + signal.SIGTERM  # every child exited 0 after the signal: the launcher reports it


@pytest.mark.parametrize("args, message", [
    (["--processes", "0", "--", "x.py"], "--processes must be ≥ 1, got 0"),
    (["--processes", "2", "--devices-per-process", "0", "--", "x.py"], "--devices-per-process must be ≥ 1"),
    (["--processes", "two", "--", "x.py"], "invalid int value"),
    (["--processes", "2", "--timeout", "0", "--", "x.py"], "--timeout must be > 0"),
    (["--processes", "2", "x.py"], "unrecognized arguments: x.py (put the command after --"),
    (["--processes", "2"], "no command: put the command after --"),
    (["--processes", "2", "--"], "no command"),
    (["--processes", "2", "--", "no/such/script.py"], "no/such/script.py: no such script"),
])
def test_bad_flags_are_one_line_and_exit_2(args, message, capsys):
    assert launcher.main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_bad_flags_from_the_command_line():
    rc, out, err, _ = _run_cli(["--processes", "0", "--", "x.py"], timeout=60)
    assert (rc, out, err) == (2, "", "error: --processes must be ≥ 1, got 0\n")


def test_child_env_keeps_other_settings():
    base = {"XLA_FLAGS": "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cuda",
            "KEEP": "1"}
    env = launcher.child_env(base, 1, 3, 4, 1234)
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=4"
    assert env["JAX_PLATFORMS"] == "cuda" and env["KEEP"] == "1"
    assert (env["AUDIOSR_JAX_COORDINATOR"], env["AUDIOSR_JAX_NUM_PROCESSES"], env["AUDIOSR_JAX_PROCESS_ID"]) == (
        "127.0.0.1:1234", "3", "1")
    assert env["JAX_COORDINATOR_BIND_ADDRESS"] == "127.0.0.1:1234"  # loopback only, not jax's [::]
    assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo" and env["PYTHONUNBUFFERED"] == "1"
    assert base["XLA_FLAGS"].endswith("=8")  # the parent's environment is not changed
    assert launcher.child_env({}, 0, 1, 2, 1)["JAX_PLATFORMS"] == "cpu"


def test_exit_status_and_free_port():
    assert [launcher.exit_status(c) for c in (0, 3, -signal.SIGKILL)] == [0, 3, 137]
    assert 1 <= launcher.free_port() <= 65535


def test_initialize_distributed_refuses_a_partial_environment(monkeypatch):
    from audiosr_jax.runtime import initialize_distributed

    monkeypatch.setenv("AUDIOSR_JAX_COORDINATOR", "127.0.0.1:1")
    monkeypatch.delenv("AUDIOSR_JAX_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("AUDIOSR_JAX_PROCESS_ID", raising=False)
    with pytest.raises(UserError, match="AUDIOSR_JAX_NUM_PROCESSES, AUDIOSR_JAX_PROCESS_ID not set"):
        initialize_distributed()
    monkeypatch.setenv("AUDIOSR_JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("AUDIOSR_JAX_PROCESS_ID", "2")
    with pytest.raises(UserError, match=r"must be in \[0, AUDIOSR_JAX_NUM_PROCESSES=2\)"):
        initialize_distributed()
