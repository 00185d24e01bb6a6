"""Stopping a training run on SIGTERM / SIGINT (preemption) at a step every process agrees on.

A signal sets a flag in the process that got it; the loop saves a checkpoint and stops after a step. With one
process that is the next step boundary, as before. With several, each process would see its own flag at its
own step: the one that saved and left would leave the others blocked in the next collective. So the flags
are combined: every ``every`` steps each process dispatches a max over all devices of its flag (a tiny jitted
all-reduce, every process at the same step) and reads it at the next check, when it has long been computed:
every process reads the same value at the same step, so all save that step and stop, with no pipeline stall.
A stop takes effect ``every`` to ``2 * every`` steps after the signal. Measured cost of a check every step on
2 CPU processes (gloo): about 1-3 ms a step (docs/training.md §Preemption and faults on several processes).

A SIGTERM that comes before the loop (start-up, restore, compilation: minutes on a large model) is caught by
jax's own handler, which ``jax.distributed.initialize`` installs (the preemption notifier; the Python handler
replaces it only for the loop): it is honoured too, at jax's preemption sync point
(``multihost_utils.reached_preemption_sync_point``, which every process reaches at the same step). That is
not the main mechanism because it covers only SIGTERM caught by jax's handler: not SIGINT (Ctrl-C, which
``audiosr_jax.launch`` forwards), not a SIGTERM during the loop, not a single process.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

# how long processes wait for each other at the loop's start (a process may compile for minutes while
# another loaded the program from the persistent cache); a dead process fails the job sooner, through the
# coordination service or the launcher
START_BARRIER_TIMEOUT_S = 3600
_barriers = 0  # barriers passed by this process: the same sequence on every process gives unique ids


class StopFlag:
    """SIGTERM/SIGINT -> ``requested`` (this process only); the previous handlers come back on exit."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("signal %d: saving a checkpoint and stopping after this step", signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def wait_for_all_processes(name: str, timeout_s: float = START_BARRIER_TIMEOUT_S) -> None:
    """Block until every process of the job calls this with the same ``name`` (the coordination service's
    barrier: no device collective). In: a name, a timeout in seconds; out: nothing. A no-op in one process.

    Why not a device collective: gloo's first collective over a set of devices gives up after 30 s when a
    process is late, and processes reach the step loop minutes apart when only one of them finds the step in
    the persistent compilation cache (on CPU the cache key differs per process and only process 0 writes)."""
    global _barriers
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    _barriers += 1
    client = distributed.global_state.client
    if client is None:  # not started by jax.distributed.initialize: fall back to a collective
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"audiosr_jax {name} {_barriers}")
        return
    client.wait_at_barrier(f"audiosr_jax:{name}:{_barriers}", int(timeout_s * 1000))


class AgreedStop:
    """Whether to save and stop after a step: the same answer on every process (see the module doc).

    ``flag``: this process's :class:`StopFlag`; ``every``: steps between checks (several processes only).
    Create it just before the step loop: with several processes that waits for all of them
    (:func:`wait_for_all_processes`). As a context manager, leaving it waits for the last all-reduce (a
    process must not exit while another still waits in it)."""

    def __init__(self, flag: StopFlag, every: int = 1):
        self.flag = flag
        self.every = max(int(every), 1)
        self.multi = jax.process_count() > 1
        self._pending = None  # the all-reduce dispatched at the previous check
        if self.multi:
            mesh = Mesh(np.asarray(jax.devices()), ("processes",))
            sharding = NamedSharding(mesh, P("processes"))
            # this process's flag as a global array, for either value (no transfer per check)
            self._flags = [jax.make_array_from_process_local_data(
                sharding, np.full((jax.local_device_count(),), v, np.int32)) for v in (0, 1)]
            self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))
            wait_for_all_processes("step loop")

    def __enter__(self) -> AgreedStop:
        return self

    def __exit__(self, *exc) -> None:
        if self._pending is not None:
            self._pending.block_until_ready()
            self._pending = None

    def _dispatch(self) -> Any:
        """Start the max over every device of this process's flag (not waited for)."""
        return self._max(self._flags[int(self.flag.requested)])

    def __call__(self, step: int) -> bool:
        """After ``step``: True when the run must save this step and stop (one process: its flag now)."""
        if not self.multi:
            return self.flag.requested
        noticed = _reached_preemption_sync_point(step)  # jax wants a call at every step
        if step % self.every and not noticed:
            return False
        agreed = self._pending is not None and bool(np.asarray(self._pending.addressable_data(0)))
        # no all-reduce is left running on a stop: a process could exit while another still waits in it
        self._pending = None if agreed or noticed else self._dispatch()
        return agreed or noticed


def _reached_preemption_sync_point(step: int) -> bool:
    """Whether every process reached jax's preemption sync point at ``step`` (a SIGTERM caught by jax's
    handler, on any process); False when jax's preemption service is off."""
    from jax.experimental import multihost_utils

    try:
        reached = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # jax_enable_preemption_service is off
        return False
    if reached:
        log.warning("preemption notice (SIGTERM caught by jax): saving a checkpoint and stopping at step %d", step)
    return reached
