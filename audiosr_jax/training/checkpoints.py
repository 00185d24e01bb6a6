"""Preemption-safe training checkpoints: orbax ``CheckpointManager`` with the state, the data iterator and
the config in one step directory.

* async saves every ``save_every`` steps, the last ``keep`` kept; ``save(force=True)`` for SIGTERM / end;
* nothing non-finite is written (checked before every save);
* a workdir whose checkpoints were made with another model/stage config is refused (one line naming the
  first differing field), never overwritten; so is one whose saved state tree (structure, shapes, dtypes)
  differs from this run's, e.g. after an optimizer setting changed (one line naming the first differing
  leaf and config field);
* nothing is ever set aside unless it is proven damaged: a step whose restore fails is re-read with its own
  saved metadata (no target, no sharding); only if that fails with a data error (garbled, truncated or
  missing file) is it moved aside (``<step>.corrupt``, with a warning) and the previous one restored. Any
  other failure (I/O error, permissions, memory, a restore that fails on intact data) stops with one line
  and leaves every checkpoint as it was. Orbax writes each step to a temporary directory and renames it
  when complete, so a kill -9 mid-save leaves the previous step intact.
* on several processes every decision is agreed: each process reads its own shards, so one may find damage
  the others do not read; after each read every process learns every process's outcome (an all-gather of
  one code), so all fall back to the same step, process 0 alone sets the damaged one aside (once, with a
  barrier before anyone lists the steps again), and an error on any process stops every process.

The workdir may be a URI (``gs://bucket/run``, ``file:///abs/run``; see :mod:`audiosr_jax.paths`): every path
here is an ``etils.epath.Path`` and every file operation (listing, exists, the set-aside rename) goes through
epath, so it works on an object store as on a local disk. On an object store a "rename" of a step directory
is a copy and delete of each of its objects (not atomic): a set-aside interrupted midway leaves the step
partly at both names; the partial ``<step>`` then fails its restore again and is set aside again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from audiosr_jax import paths
from audiosr_jax.errors import CheckpointError
from audiosr_jax.training import state as st

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("stage", "model")  # config subtrees that must match to resume
# absl/tensorstore status codes (anywhere in a message, as "CODE: ...") that describe the environment, not the
# bytes on disk (EIO is UNAVAILABLE, EACCES PERMISSION_DENIED, ENOMEM/ENOSPC RESOURCE_EXHAUSTED): never proof
_ENVIRONMENT_STATUS = re.compile(r"(?<![A-Z_])(PERMISSION_DENIED|UNAVAILABLE|RESOURCE_EXHAUSTED|DEADLINE_EXCEEDED|"
                                 r"CANCELLED|ABORTED|UNAUTHENTICATED|UNKNOWN|INTERNAL|UNIMPLEMENTED):")
# which config subtrees decide which part of the state (to name the likely cause of a tree mismatch)
_CAUSES = {"opt_state": ("optim",), "params": ("model", "stage"), "ema": ("model", "stage")}


def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k in sorted(d):
            out.update(_flatten(d[k], f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_differences(saved: dict, current: dict, keys: tuple[str, ...] | None = None) -> list[tuple[str, Any, Any]]:
    """Every differing field (dotted key, saved value, current value) of two config dicts, sorted by key;
    only under the top-level ``keys`` if given. Lists and tuples compare equal (JSON has no tuples)."""
    if keys is not None:
        saved, current = {k: saved.get(k) for k in keys}, {k: current.get(k) for k in keys}
    a, b = _flatten(saved), _flatten(current)
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            va, vb = list(va), list(vb)
        if va != vb:
            out.append((key, va, vb))
    return out


def config_difference(saved: dict, current: dict) -> str | None:
    """First differing identity field between two config dicts, as 'key is A there and B here', else None."""
    diffs = config_differences(saved, current, IDENTITY_KEYS)
    return f"{diffs[0][0]} is {diffs[0][1]!r} there and {diffs[0][2]!r} here" if diffs else None


def _key_name(k: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def tree_signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{"a/b/0/c": (shape, dtype name)} of every array leaf of a tree: a TrainState of arrays or
    ShapeDtypeStructs, or orbax's saved metadata tree (namedtuples there are dicts and lists, which give the
    same paths; empty nodes have no leaves in either)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): (tuple(int(d) for d in getattr(x, "shape", ())),
                                                   str(getattr(x, "dtype", type(x).__name__)))
            for path, x in leaves}


def tree_difference(saved: dict, current: dict) -> tuple[str, str, str] | None:
    """First difference between two ``tree_signature``s (this run's order first) as (leaf path, kind
    "shape"/"dtype"/"structure", detail), else None."""
    for path, (shape, dtype) in current.items():
        if path not in saved:
            only_saved = next((p for p in saved if p not in current), None)
            return path, "structure", f"{path} is not in the checkpoint" + (
                f"; {only_saved} is only there" if only_saved else "")
        s_shape, s_dtype = saved[path]
        if s_shape != shape:
            return path, "shape", f"{path}: saved {s_shape} vs {shape}"
        if s_dtype != dtype:
            return path, "dtype", f"{path}: saved {s_dtype} vs {dtype}"
    extra = next((p for p in saved if p not in current), None)
    return (extra, "structure", f"{extra} is in the checkpoint but not in this run") if extra else None


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while err is not None and all(err is not e for e in out):
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def is_data_error(err: BaseException) -> bool:
    """Whether ``err`` (from reading a checkpoint) shows bad bytes on disk (garbled, truncated, missing file),
    i.e. can prove damage. An OSError other than ENOENT (EIO, EACCES, ENOSPC...), a MemoryError or a
    tensorstore status describing the environment (PERMISSION_DENIED, UNAVAILABLE...) anywhere in the cause
    chain never does; neither does an exception type that is not a decoding/lookup error (a bug)."""
    for e in _chain(err):
        if isinstance(e, MemoryError):
            return False
        if isinstance(e, OSError) and not (isinstance(e, FileNotFoundError) or e.errno == errno.ENOENT):
            return False
        if _ENVIRONMENT_STATUS.search(str(e)):
            return False
    err = _unwrapped(err)
    return isinstance(err, (ValueError, KeyError, EOFError, FileNotFoundError)) or (
        isinstance(err, OSError) and err.errno == errno.ENOENT)


def _unwrapped(err: BaseException) -> BaseException:
    """The error under orbax's wrappers: a failed read of one array shard is re-raised as a bare ``Exception``
    ("Encountered error while reading array index ...", orbax serialization.py) from the reader's error (e.g.
    tensorstore's ValueError "OUT_OF_RANGE: ... byte range ... is not valid" for a truncated file)."""
    while type(err) is Exception and isinstance(err.__cause__, Exception):
        err = err.__cause__
    return err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


OK, DAMAGED, FAILED = 0, 1, 2  # one process's outcome of reading a step: fine, proven bad bytes, anything else


def outcome(err: BaseException | None) -> int:
    """OK for no error, DAMAGED for a data error (:func:`is_data_error`), FAILED for any other."""
    return OK if err is None else DAMAGED if is_data_error(err) else FAILED


def agree(code: int) -> list[int]:
    """Every process's outcome code, in process order (an all-gather; every process must call it at the same
    point). In: this process's code; out: [code] in a single process."""
    if jax.process_count() == 1:
        return [code]
    from jax.experimental import multihost_utils

    return [int(c) for c in np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)]


def _processes(codes: list[int], code: int) -> str:
    return ", ".join(str(i) for i, c in enumerate(codes) if c == code)


def _restoring(checkpointer: Any, restore: Any, *args, **kwargs) -> Any:
    """``restore(*args, **kwargs)``, an orbax restore through ``checkpointer``, which ends with a barrier of
    every process. When it raises on several processes, this process still joins that barrier before
    re-raising: the processes whose read succeeded wait there, and must meet this one in :func:`agree` next.
    The key mirrors orbax's (``Checkpointer.restore``: "Checkpointer:restore" with the checkpointer's prefix)."""
    try:
        return restore(*args, **kwargs)
    except Exception:
        if jax.process_count() > 1:
            from orbax.checkpoint import multihost

            prefix = getattr(checkpointer, "_barrier_sync_key_prefix", None)
            multihost.sync_global_processes(multihost.unique_barrier_key("Checkpointer:restore", prefix=prefix))
        raise


class Checkpointer:
    """Save/restore of (TrainState, data iterator, config) under ``<workdir>/checkpoints``.

    ``workdir``: a local path (made absolute) or a URI (``gs://bucket/run``; ``file://`` is the local disk),
    see :func:`audiosr_jax.paths.resolve`; ``self.directory`` is the ``epath.Path`` of its checkpoints."""

    def __init__(self, workdir: str | os.PathLike, config: dict, *, save_every: int, keep: int,
                 async_save: bool = True):
        self.directory = paths.resolve(workdir) / "checkpoints"
        self.config = json.loads(json.dumps(config))  # JSON-safe copy (tuples -> lists)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                               enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    # ------------------------------------------------------------------------------------------- reading

    def saved_config(self, step: int) -> dict:
        """The config JSON item saved with ``step``."""
        return _restoring(self.manager._checkpointer, self.manager.restore, step,
                          args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def saved_tree(self, step: int) -> Any:
        """The saved state's orbax metadata tree (dicts/lists of ArrayMetadata: shapes and dtypes)."""
        handler = ocp.StandardCheckpointHandler()
        try:
            return handler.metadata(self.step_dir(step) / "state").tree
        finally:
            handler.close()

    def verify(self, step: int) -> None:
        """Integrity check of ``step`` on its own terms: read every array back with the step's own metadata
        (host numpy: no target tree, no sharding, so no config or mesh can make it fail) and parse the data
        iterator's JSON. Raises whatever reading raised; returns if the step's data is intact."""
        with ocp.PyTreeCheckpointer() as reader:
            tree = _restoring(reader, self.saved_tree, step)  # the barrier of the read below, if this fails
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            _restoring(reader, reader.restore, self.step_dir(step) / "state",
                       args=ocp.args.PyTreeRestore(restore_args=restore_args))
        it_dir = self.step_dir(step) / "data_iter"
        if it_dir.exists():
            for f in it_dir.iterdir():
                if f.name.endswith(".json"):
                    json.loads(f.read_text())

    def _refuse_other_config(self, saved: dict) -> None:
        """CheckpointError if the saved config's identity fields (stage, model) differ from this run's."""
        diff = config_difference(saved, self.config)
        if diff:
            raise CheckpointError(f"{self.directory}: holds a checkpoint of another config ({diff}); "
                                  f"use another --workdir or the matching config")

    def _refuse_other_tree(self, step: int, saved: dict, saved_tree: Any, abstract_state: Any) -> None:
        """CheckpointError naming the first differing leaf and the likeliest differing config field if the
        saved state's tree (structure, shapes, dtypes) is not this run's."""
        found = tree_difference(tree_signature(saved_tree), tree_signature(abstract_state))
        if found is None:
            return
        path, kind, detail = found
        part = path.split("/", 1)[0]
        what = {"opt_state": "optimizer state", "params": "parameters", "ema": "EMA parameters"}.get(part, "state")
        diffs = config_differences(saved, self.config)
        likely = [d for d in diffs if d[0].split(".", 1)[0] in _CAUSES.get(part, ())]
        if diffs:
            key, a, b = (likely or diffs)[0]
            others = [d[0] for d in diffs if d[0] != key]
            more = (f" (other differing fields: {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
                    if others else "")
            why = f"it was saved with {key}={a!r} and this run has {key}={b!r}{more}"
        else:
            why = "its saved config equals this run's (the code changed?)"
        raise CheckpointError(f"{self.step_dir(step)}: holds {what} of another {kind} ({detail}); {why}; "
                              f"use another --workdir or the saved config")

    def _unreadable(self, step: int, err: BaseException | None, doing: str,
                    codes: list[int] | None = None) -> CheckpointError:
        """The one-line error for a failure that does not prove damage (nothing was moved): this process's
        ``err``, or (``err`` None or a data error while ``codes`` show another process FAILED) theirs."""
        if err is None or (codes is not None and outcome(err) != FAILED):
            what = f"on process {_processes(codes or [], FAILED)} (see its log)"
        else:
            what = f"({_first_line(err)})"
        return CheckpointError(f"{self.step_dir(step)}: {doing} failed {what}; that is no proof of "
                               f"damage, so every checkpoint is left as it was: fix the cause and rerun (or move "
                               f"this step aside to resume from an earlier one)")

    def _move_aside(self, step: int, err: BaseException | None, codes: list[int] | None = None) -> None:
        """Rename the damaged step to ``<step>.corrupt`` (``.corrupt1``, ... if taken) beside it, through epath
        (a local rename, or a copy and delete of its objects on an object store); process 0 only, every
        process waits for it. ``err``: what this process read (None: only other processes, in ``codes``, found
        the damage)."""
        path = self.step_dir(step)
        reason = _first_line(err) if err is not None else f"found by process {_processes(codes or [], DAMAGED)}"
        if jax.process_index() == 0:
            dest, n = path.with_name(f"{path.name}.corrupt"), 1
            while dest.exists():
                dest, n = path.with_name(f"{path.name}.corrupt{n}"), n + 1
            log.warning("checkpoint %s is unreadable (%s); moved to %s, trying the previous one", path, reason, dest)
            if path.exists():
                path.replace(dest)
        elif err is not None:
            log.warning("checkpoint %s is unreadable here (%s); process 0 sets it aside", path, reason)
        if jax.process_count() > 1:  # every process must see the rename before it lists the steps again
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"audiosr_jax: checkpoint {step} set aside")
        self.manager.reload()

    def _set_aside_if_damaged(self, step: int, err: BaseException | None, doing: str) -> bool:
        """Agree on every process's ``err`` of one read of ``step``: False if every read succeeded; True after
        setting the step aside if one proved damage; CheckpointError (one line, every process) if any failed
        otherwise."""
        codes = agree(outcome(err))
        if FAILED in codes:
            raise self._unreadable(step, err, doing, codes) from err
        if DAMAGED in codes:
            self._move_aside(step, err, codes)
            return True
        return False

    def restore(self, abstract_state: st.TrainState, data_iter: Any | None) -> tuple[st.TrainState | None, int | None]:
        """Latest readable (state, step), placed as ``abstract_state``'s shardings; (None, None) if there is
        none. The data iterator (if given) is restored in place. Raises CheckpointError (and changes nothing)
        if a step holds another config or state tree, or cannot be read for a reason other than damage. On
        several processes every process returns the same step (or raises)."""
        for step in reversed(self.steps()):
            state = self._restore_step(step, abstract_state, data_iter)
            if state is not None:
                return state, step
        return None, None

    def _restore_step(self, step: int, abstract_state: st.TrainState, data_iter: Any | None) -> st.TrainState | None:
        """``step``'s state (and the iterator restored in place), or None when it was damaged and set aside."""
        saved = saved_tree = None
        try:
            saved = self.saved_config(step)
            saved_tree = self.saved_tree(step)
        except Exception as e:  # unreadable config item or state metadata
            err = e
        else:
            err = None
        if self._set_aside_if_damaged(step, err, "reading its config and metadata"):
            return None
        self._refuse_other_config(saved)
        self._refuse_other_tree(step, saved, saved_tree, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data_iter"] = data_iter.restore_args()
        try:
            restored = _restoring(self.manager._checkpointer, self.manager.restore, step,
                                  args=ocp.args.Composite(**items))
        except Exception as e:
            restored, err = None, e
        codes = agree(outcome(err))
        if FAILED in codes:
            raise self._unreadable(step, err, "restoring it", codes) from err
        if DAMAGED in codes:
            # a data error (on some process) proves nothing yet: the step must also fail on its own terms
            try:
                self.verify(step)
            except Exception as e:
                damage = e
            else:
                damage = None
            if self._set_aside_if_damaged(step, damage, "checking its integrity"):
                return None
            where = f"({_first_line(err)})" if err is not None else f"on process {_processes(codes, DAMAGED)}"
            raise CheckpointError(f"{self.step_dir(step)}: cannot be restored into this run {where} although its "
                                  f"data reads back intact: every checkpoint is left as it was; use another "
                                  f"--workdir or the saved config") from err
        state = restored["state"]
        if not bool(st.all_finite(state.params, state.opt_state, state.ema)):
            # saves refuse non-finite state, so non-finite values on disk are damage (the same verdict on
            # every process: the check reduces over the global arrays)
            self._move_aside(step, ValueError("non-finite values"))
            return None
        return state

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
