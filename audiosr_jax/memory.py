"""Host-memory hygiene for long inference runs: give freed memory back to the OS, measure the peak.

glibc keeps freed blocks below its (self-raising) mmap threshold in its heap, so after the checkpoint
restore and an XLA compilation hundreds of MB stay resident that the next program cannot reuse for its
large buffers. Capping the threshold makes every large buffer a fresh mapping that is returned on free, and
`malloc_trim` returns the rest. Both are no-ops where glibc is absent (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import resource
import sys

__all__ = ["cap_mmap_threshold", "release_free_memory", "peak_rss_bytes", "current_rss_bytes"]

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@functools.lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def cap_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Serve every allocation of at least `nbytes` from its own mapping (returned to the OS on free).
    Returns whether it took effect."""
    libc = _libc()
    return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def release_free_memory() -> None:
    """Collect garbage and return free heap pages to the OS (between stages, after loads and compiles)."""
    gc.collect()
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    """This process's resident set size now, in bytes (Linux; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss_bytes()
