"""Live progress from inside compiled sampling: one tick per network call, shown by a host-side bar.

The sampler is one `lax.scan`, so progress must come from inside the program: with
`SamplingOptions(progress=True)` the denoiser calls `jax.debug.callback(tick)` after each UNet call (an
unordered host callback: the device never waits for the host). `step_bar(...)` installs the tqdm bar that
the ticks advance; without one, ticks are dropped. Measured cost: benchmarks/bench_progress.py.
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["tick", "step_bar"]

_lock = threading.Lock()
_bar = None


def tick(*_) -> None:
    """Advance the installed bar by one network call (called from the device through jax.debug.callback)."""
    with _lock:
        if _bar is not None:
            _bar.update(1)


@contextlib.contextmanager
def step_bar(desc: str = "sampling", enabled: bool = True):
    """A tqdm bar of network calls for the duration of the block; `bar.total` is grown by the caller as
    work is queued (`add(n)`). Yields an object with `add(n)`; a no-op when not enabled."""
    global _bar
    from tqdm import tqdm

    bar = tqdm(total=0, unit="step", desc=desc, disable=not enabled, dynamic_ncols=True)

    class _Handle:
        @staticmethod
        def add(n: int) -> None:
            with _lock:
                bar.total += n
                bar.refresh()

    with _lock:
        _bar = bar if enabled else None
    try:
        yield _Handle()
    finally:
        with _lock:
            _bar = None
        bar.close()
