"""Process-wide runtime set-up, in one place: the persistent XLA compilation cache and device meshes.

Every entry point (sample, train, ablate, demo, the Python API) calls `enable_compilation_cache()` once, so
a second run of the same program skips compilation (tens of seconds at full width on CPU).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["cache_root", "enable_compilation_cache", "local_mesh"]


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


def local_mesh(devices: int = 0):
    """A 1-D mesh ("data",) over this process's first `devices` local devices (0 = all of them)."""
    import jax
    from jax.sharding import Mesh

    from audiosr_jax.errors import UserError

    available = jax.local_devices()
    if not 0 <= devices <= len(available):
        raise UserError(f"devices={devices}: this process has {len(available)} local devices (0 = all)")
    return Mesh(np.asarray(available[: devices or None]), ("data",))
