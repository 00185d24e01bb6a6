"""Run a multi-process JAX job on this machine exactly as on a pod (like torchrun, for JAX on CPU).

    python -m audiosr_jax.launch --processes N --devices-per-process K [--port P] [--timeout S] -- \\
        SCRIPT.py|-m MODULE [ARGS...]

    python -m audiosr_jax.launch --processes 2 --devices-per-process 4 -- train.py --multihost --config=... --workdir=...
    python -m audiosr_jax.launch --processes 2 --devices-per-process 2 -- sample.py --multihost IN -o OUT ...

Starts N copies of the command with this Python. Process i gets AUDIOSR_JAX_COORDINATOR=127.0.0.1:PORT,
AUDIOSR_JAX_NUM_PROCESSES=N and AUDIOSR_JAX_PROCESS_ID=i, which `audiosr_jax.runtime.initialize_distributed()`
(what ``--multihost`` calls) turns into ``jax.distributed.initialize(...)``; K fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=K), JAX_PLATFORMS=cpu unless set, and gloo CPU collectives.
The coordinator listens on the loopback address only. Every output line is prefixed with ``[i] ``.

When a process fails (non-zero exit or killed) the others are stopped (SIGTERM, then SIGKILL after a grace
period), so a job never hangs; SIGINT/SIGTERM sent to the launcher are forwarded to every process.
Exit status: 0 all succeeded; the first failure's status (a process killed by signal S counts as 128+S);
124 --timeout expired; 2 a bad flag.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

__all__ = ["child_env", "exit_status", "free_port", "launch", "main"]

GRACE_S = 5.0  # SIGTERM → SIGKILL
_POLL_S = 0.1


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (the kernel's choice); in: nothing, out: the port number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(base: dict, index: int, processes: int, devices_per_process: int, port: int) -> dict:
    """The environment of process `index` of `processes`: a copy of `base` (e.g. os.environ) plus the job's.

    In: the parent environment, this process's index, the job size, fake CPU devices per process, and the
    coordinator port on 127.0.0.1. Out: a new dict (`base` is not changed).
    """
    env = dict(base)
    address = f"127.0.0.1:{port}"
    env["AUDIOSR_JAX_COORDINATOR"] = address
    env["AUDIOSR_JAX_NUM_PROCESSES"] = str(processes)
    env["AUDIOSR_JAX_PROCESS_ID"] = str(index)
    # jax binds the coordinator service to [::]:PORT (every interface) unless told otherwise.
    env["JAX_COORDINATOR_BIND_ADDRESS"] = address
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices_per_process}"])
    env.setdefault("JAX_PLATFORMS", "cpu")
    # Read by jax's config at import; gloo is the only CPU implementation that needs no external launcher.
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed, not at exit
    return env


def exit_status(returncode: int) -> int:
    """A shell-style exit status from a Popen returncode: -S (killed by signal S) becomes 128+S."""
    return 128 - returncode if returncode < 0 else returncode


def _command(argv) -> list:
    """[python, *argv] for `SCRIPT ARGS` or `-m MODULE ARGS`; UserError (one line) when unusable."""
    from audiosr_jax.errors import UserError

    argv = list(argv)
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        raise UserError("no command: give SCRIPT.py or -m MODULE (and its arguments) after --")
    if not argv[0].startswith("-") and not os.path.isfile(argv[0]):
        raise UserError(f"{argv[0]}: no such script")
    return [sys.executable, *argv]


def _pump(pipe, prefix: str, stream, lock) -> None:
    """Copy `pipe` to `stream` line by line as lines arrive, each prefixed; runs until the pipe closes."""
    for raw in iter(pipe.readline, b""):
        text = raw.decode("utf-8", errors="replace")
        try:
            with lock:
                stream.write(prefix + (text if text.endswith("\n") else text + "\n"))
                stream.flush()
        except (OSError, ValueError):
            pass  # our own output is gone (closed pipe): keep draining so the child never blocks on a full pipe
    pipe.close()


def _death_signal_hook():
    """A preexec_fn (Linux) that makes the child get SIGKILL when the launcher dies, even by SIGKILL, so no
    JAX process is orphaned; None where unavailable. libc is resolved here, before fork: the child only calls.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook():
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return hook


def _signal_group(proc, sig) -> None:
    """Send `sig` to the child's process group (the child and anything it started) if it still runs."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def launch(argv, processes: int, devices_per_process: int, port: int | None = None,
           timeout: float | None = None) -> int:
    """Run `argv` (SCRIPT ARGS or -m MODULE ARGS) as `processes` JAX processes on this machine; wait for all.

    In: the command; the number of processes; fake CPU devices per process; the coordinator port on
    127.0.0.1 (None: a free one); a wall-clock limit in seconds (None: none). Output: each child's
    stdout/stderr lines on ours, prefixed ``[i] ``. Out: the exit status — 0, the first failure's status
    (128+S for a child killed by signal S), 124 on timeout. Raises UserError on bad arguments.
    """
    from audiosr_jax.errors import UserError

    if not isinstance(processes, int) or processes < 1:
        raise UserError(f"--processes must be ≥ 1, got {processes}")
    if not isinstance(devices_per_process, int) or devices_per_process < 1:
        raise UserError(f"--devices-per-process must be ≥ 1, got {devices_per_process}")
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port must be in [1, 65535], got {port}")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {timeout}")
    command = _command(argv)
    port = port or free_port()
    print(f"launch: {processes} processes × {devices_per_process} devices, coordinator 127.0.0.1:{port}: "
          f"{shlex.join(command[1:])}", file=sys.stderr, flush=True)

    received = []  # signals sent to the launcher, forwarded by the supervising loop
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    procs, pumps = [], []
    locks = {id(sys.stdout): threading.Lock(), id(sys.stderr): threading.Lock()}
    hook = _death_signal_hook() if sys.platform.startswith("linux") else None
    try:
        for i in range(processes):
            # Own session: a terminal's Ctrl-C reaches the launcher only (which forwards it once), and
            # killpg reaches what the child started.
            procs.append(subprocess.Popen(
                command, env=child_env(os.environ, i, processes, devices_per_process, port),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=hook))  # noqa: PLW1509 (our pipe threads start only after every fork)
        for i, proc in enumerate(procs):
            for pipe, stream in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                t = threading.Thread(target=_pump, args=(pipe, f"[{i}] ", stream, locks[id(stream)]), daemon=True)
                t.start()
                pumps.append(t)
        return _supervise(procs, timeout, received)
    finally:
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        for t in pumps:
            t.join(timeout=5)  # a grandchild outside the group could hold a pipe open: don't wait forever
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(procs, timeout, received) -> int:
    """Wait for every child; stop all when one fails, on timeout, or on a forwarded signal. Out: exit status."""
    start = time.monotonic()
    first_failure = timed_out = interrupted = None
    stopping_since = None
    forwarded = 0

    def stop(now, sig=signal.SIGTERM):
        nonlocal stopping_since
        for proc in procs:
            _signal_group(proc, sig)
        stopping_since = stopping_since or now

    while True:
        codes = [proc.poll() for proc in procs]
        if all(c is not None for c in codes):
            break
        now = time.monotonic()
        while forwarded < len(received):
            interrupted = received[forwarded]
            forwarded += 1
            print(f"launch: got {signal.Signals(interrupted).name}; forwarding it to every process",
                  file=sys.stderr, flush=True)
            stop(now, interrupted)
        if stopping_since is None:
            failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None:
                first_failure = exit_status(failed[1])
                print(f"launch: process {failed[0]} exited with status {first_failure}; stopping the others",
                      file=sys.stderr, flush=True)
                stop(now)
        if timeout is not None and not timed_out and now - start > timeout:
            timed_out = True
            print(f"launch: timed out after {timeout:g} s; stopping every process", file=sys.stderr, flush=True)
            stop(now)
        if stopping_since is not None and now - stopping_since > GRACE_S:
            stop(now, signal.SIGKILL)
        time.sleep(_POLL_S)
    if first_failure is not None:
        return first_failure
    if timed_out:
        return 124
    worst = next((exit_status(c) for c in codes if c), 0)
    return worst or (128 + interrupted if interrupted else 0)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line UserErrors (no usage block)."""

    def error(self, message):
        from audiosr_jax.errors import UserError

        raise UserError(message)


def main(argv=None) -> int:
    """Parse the launcher's flags (before ``--``) and run the command after it; returns the exit status."""
    from audiosr_jax.errors import UserError

    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = _Parser(prog="python -m audiosr_jax.launch", description=__doc__.split("\n\n")[0],
                usage="%(prog)s --processes N [--devices-per-process K] [--port P] [--timeout S] "
                      "-- SCRIPT|-m MODULE [ARGS...]")
    p.add_argument("--processes", type=int, required=True, help="number of JAX processes")
    p.add_argument("--devices-per-process", type=int, default=1, help="fake CPU devices in each process")
    p.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("--timeout", type=float, default=None, help="stop everything after S seconds (exit 124)")
    try:
        args, extra = p.parse_known_args(argv[:split])
        where = "put the command after --: ... -- SCRIPT.py|-m MODULE [ARGS...]"
        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)} ({where})")
        if split == len(argv):
            raise UserError(f"no command: {where}")
        return launch(argv[split + 1:], args.processes, args.devices_per_process, args.port, args.timeout)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
