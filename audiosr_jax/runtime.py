"""Process-wide runtime set-up, in one place: the persistent XLA compilation cache, device meshes,
and joining a multi-process job (`initialize_distributed`, which `python -m audiosr_jax.launch` relies on).

Every entry point (sample, train, ablate, demo, the Python API) calls `enable_compilation_cache()` once, so
a second run of the same program skips compilation (tens of seconds at full width on CPU).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["cache_root", "enable_compilation_cache", "initialize_distributed", "local_mesh"]


def cache_root() -> str:
    """audiosr-jax's cache folder: $AUDIOSR_JAX_HOME, else ~/.cache/audiosr_jax (converted weights, XLA)."""
    return os.environ.get("AUDIOSR_JAX_HOME", os.path.join(os.path.expanduser("~"), ".cache", "audiosr_jax"))


def enable_compilation_cache() -> str:
    """Persist compiled XLA programs in $AUDIOSR_JAX_CACHE (default `cache_root()`/xla); returns the folder."""
    import jax

    cache = os.environ.get("AUDIOSR_JAX_CACHE", os.path.join(cache_root(), "xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return cache


def initialize_distributed() -> None:
    """Join the multi-process JAX job this process belongs to (what every ``--multihost`` calls).

    In: the environment. When AUDIOSR_JAX_COORDINATOR (host:port), AUDIOSR_JAX_NUM_PROCESSES and
    AUDIOSR_JAX_PROCESS_ID are set (by ``python -m audiosr_jax.launch``), joins that job; otherwise calls
    ``jax.distributed.initialize()`` with no arguments (TPU pod, SLURM, Open MPI, Kubernetes auto-detection).
    Out: nothing; raises UserError (one line) when the three variables are set only in part or are malformed.
    """
    import jax

    from audiosr_jax.errors import UserError

    names = ("AUDIOSR_JAX_COORDINATOR", "AUDIOSR_JAX_NUM_PROCESSES", "AUDIOSR_JAX_PROCESS_ID")
    values = [os.environ.get(n, "") for n in names]
    if not any(values):
        # jax (0.10) auto-detects only the coordinator address from plain env vars (JAX_COORDINATOR_ADDRESS);
        # the process count and id come only from a cluster it recognises, hence the variables above.
        jax.distributed.initialize()
        return
    if not all(values):
        missing = ", ".join(n for n, v in zip(names, values) if not v)
        raise UserError(f"{missing} not set: set all of {', '.join(names)} or none")
    coordinator, count, index = values
    try:
        count, index = int(count), int(index)
    except ValueError:
        raise UserError(f"AUDIOSR_JAX_NUM_PROCESSES={values[1]!r} and AUDIOSR_JAX_PROCESS_ID={values[2]!r} "
                        "must be integers") from None
    if not 0 <= index < count or ":" not in coordinator:
        raise UserError(f"AUDIOSR_JAX_PROCESS_ID={index} must be in [0, AUDIOSR_JAX_NUM_PROCESSES={count}) and "
                        f"AUDIOSR_JAX_COORDINATOR={coordinator!r} must be host:port")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=count, process_id=index)


def local_mesh(devices: int = 0):
    """A 1-D mesh ("data",) over this process's first `devices` local devices (0 = all of them)."""
    import jax
    from jax.sharding import Mesh

    from audiosr_jax.errors import UserError

    available = jax.local_devices()
    if not 0 <= devices <= len(available):
        raise UserError(f"devices={devices}: this process has {len(available)} local devices (0 = all)")
    return Mesh(np.asarray(available[: devices or None]), ("data",))
