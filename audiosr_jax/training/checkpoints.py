"""Preemption-safe training checkpoints: orbax ``CheckpointManager`` with the state, the data iterator and
the config in one step directory.

* async saves every ``save_every`` steps, the last ``keep`` kept; ``save(force=True)`` for SIGTERM / end;
* nothing non-finite is written (checked before every save);
* a workdir whose checkpoints were made with another model/stage config is refused (one line naming the
  first differing field), never overwritten;
* an unreadable latest step is moved aside (``<step>.corrupt``) with a warning and the previous one is
  restored; orbax writes each step to a temporary directory and renames it when complete, so a kill -9
  mid-save leaves the previous step intact.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from audiosr_jax.errors import CheckpointError
from audiosr_jax.training import state as st

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("stage", "model")  # config subtrees that must match to resume


def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k in sorted(d):
            out.update(_flatten(d[k], f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_difference(saved: dict, current: dict) -> str | None:
    """First differing identity field between two config dicts, as 'key: saved vs current', else None."""
    a = _flatten({k: saved.get(k) for k in IDENTITY_KEYS})
    b = _flatten({k: current.get(k) for k in IDENTITY_KEYS})
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            va, vb = list(va), list(vb)
        if va != vb:
            return f"{key} is {va!r} there and {vb!r} here"
    return None


class Checkpointer:
    """Save/restore of (TrainState, data iterator, config) under ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str, config: dict, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.config = json.loads(json.dumps(config))  # JSON-safe copy (tuples -> lists)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                               enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def _check_identity(self, step: int) -> None:
        saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        diff = config_difference(saved, self.config)
        if diff:
            raise CheckpointError(f"{self.directory}: holds a checkpoint of another config ({diff}); "
                                  f"use another --workdir or the matching config")

    def _move_aside(self, step: int, err: BaseException) -> None:
        path = os.path.join(self.directory, str(step))
        log.warning("checkpoint %s is unreadable (%s: %s); moved to %s.corrupt, trying the previous one",
                    path, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "", path)
        if jax.process_index() == 0 and os.path.exists(path):
            dest = path + ".corrupt"
            n = 1
            while os.path.exists(dest):
                dest, n = f"{path}.corrupt{n}", n + 1
            os.replace(path, dest)
        self.manager.reload()

    def restore(self, abstract_state: st.TrainState, data_iter: Any | None) -> tuple[st.TrainState | None, int | None]:
        """Latest readable (state, step), placed as ``abstract_state``'s shardings; (None, None) if there is
        none. The data iterator (if given) is restored in place."""
        for step in reversed(self.steps()):
            try:
                self._check_identity(step)
            except CheckpointError:
                raise
            except Exception as err:  # unreadable config item: the step is broken
                self._move_aside(step, err)
                continue
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iter is not None:
                items["data_iter"] = data_iter.restore_args()
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as err:
                self._move_aside(step, err)
                continue
            state = restored["state"]
            if not bool(st.all_finite(state.params, state.opt_state, state.ema)):
                self._move_aside(step, ValueError("non-finite values"))
                continue
            return state, step
        return None, None

    def save(self, step: int, state: st.TrainState, data_iter: Any | None, force: bool = False) -> bool:
        """Save if due (or ``force``); returns whether a save started. Refuses non-finite state."""
        if not force and not self.manager.should_save(step):
            return False
        if step in self.manager.all_steps():
            return False
        if not bool(st.all_finite(state.params, state.opt_state, state.ema)):
            raise CheckpointError(f"{self.directory}: refusing to save step {step}: the state is not finite")
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(self.config)}
        if data_iter is not None:
            items["data_iter"] = data_iter.checkpoint_args()
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=force))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
