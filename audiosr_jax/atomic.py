"""Replacing a directory without a moment where a failure loses both the old and the new one."""

from __future__ import annotations

import os

__all__ = ["swap_in"]


def swap_in(new: str | os.PathLike, target: str | os.PathLike, aside: str | os.PathLike) -> None:
    """Rename the finished directory `new` to `target`. Whatever is at `target` is first renamed to `aside`
    and put back if the second rename fails or is interrupted; the caller deletes `aside` afterwards.

    All three paths must be on one filesystem (renames are then atomic); `aside` must not exist."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    if not (os.path.exists(target) or os.path.islink(target)):
        os.rename(new, target)
        return
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
