"""Checkpointer restore/save on a tiny state (no model, no compile): nothing is ever set aside unless it is
proven damaged. Another optimizer state tree, an I/O or memory error, or a restore that fails on intact data
stops with one line and leaves every checkpoint byte-for-byte as it was; garbled tensor data, garbled
metadata, a missing config item or non-finite values on disk are set aside and the previous step restored;
a non-finite state is never written; on several processes the rename is followed by a barrier."""

import errno
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from fs_snapshot import tree_snapshot
from jax.sharding import SingleDeviceSharding

from audiosr_jax.errors import CheckpointError
from audiosr_jax.training import checkpoints as ck
from audiosr_jax.training import state as st
from audiosr_jax.training.optim import make_optimizer

SAVED_STEPS = (2, 4)


def _config(clip_norm=None, width=8) -> dict:
    return {"stage": "ldm", "model": {"width": width},
            "optim": {"optimizer": "adam", "lr": 1e-3, "clip_norm": clip_norm}, "train": {"total_steps": 10}}


def _state(config: dict, seed=0) -> st.TrainState:
    """A TrainState with one group {"w": [4, width], "b": [width]} and the config's optimizer."""
    width = config["model"]["width"]
    rng = np.random.default_rng(seed)
    params = {"g": {"w": jnp.asarray(rng.standard_normal((4, width)), jnp.float32),
                    "b": jnp.asarray(rng.standard_normal(width), jnp.float32)}}
    tx, _ = make_optimizer(ml_collections.ConfigDict(config["optim"]), 10)
    return st.create_state(params, {"g": tx}, ("g",), 0)


def _abstract(config: dict):
    sh = SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), jax.eval_shape(lambda: _state(config)))


def _checkpointer(workdir, config) -> ck.Checkpointer:
    return ck.Checkpointer(str(workdir), config, save_every=1, keep=5, async_save=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workdir with checkpoints at SAVED_STEPS (adam, no clipping); {step: the state saved there}."""
    wd = tmp_path_factory.mktemp("saved")
    c = _checkpointer(wd, _config())
    states = {}
    for step in SAVED_STEPS:
        states[step] = _state(_config(), seed=step)
        assert c.save(step, states[step], None, force=True)
    c.close()
    return wd, states


@pytest.fixture
def workdir(saved, tmp_path):
    shutil.copytree(saved[0], tmp_path / "wd")
    return tmp_path / "wd"


def _assert_untouched(workdir, before):
    assert tree_snapshot(workdir / "checkpoints") == before
    assert not [p for p in (workdir / "checkpoints").iterdir() if ".corrupt" in p.name]


def _restore(workdir, config=None):
    config = config or _config()
    c = _checkpointer(workdir, config)
    try:
        return c.restore(_abstract(config), None)
    finally:
        c.close()


def _data_files(step_dir):
    """The tensor data files (ocdbt value files) of a step's state."""
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restore_latest(workdir, saved):
    state, step = _restore(workdir)
    assert step == SAVED_STEPS[-1]
    _assert_same(state.params, saved[1][step].params)


def test_other_optimizer_state_structure_is_refused_and_nothing_changes(workdir):
    """Gradient clipping switched on adds an optimizer-chain entry: one line naming the leaf and the field."""
    before = tree_snapshot(workdir / "checkpoints")
    with pytest.raises(CheckpointError) as exc:
        _restore(workdir, _config(clip_norm=1.0))
    msg = str(exc.value)
    assert "\n" not in msg and str(workdir / "checkpoints" / "4") in msg
    assert "optimizer state of another structure" in msg and "opt_state/g/" in msg
    assert "optim.clip_norm=None" in msg and "optim.clip_norm=1.0" in msg
    _assert_untouched(workdir, before)


def test_other_state_shape_is_refused_and_nothing_changes(workdir, monkeypatch):
    """Same tree, another shape (here with an identical saved config: the message says so)."""
    before = tree_snapshot(workdir / "checkpoints")
    monkeypatch.setattr(ck, "IDENTITY_KEYS", ("stage",))  # let the width change through the identity check
    with pytest.raises(CheckpointError, match=r"parameters of another shape \(params/g/b: saved \(8,\) vs \(6,\)\); "
                                              r"it was saved with model.width=8 and this run has model.width=6"):
        _restore(workdir, _config(width=6))
    _assert_untouched(workdir, before)


def _failing_restore(monkeypatch, err, item="state"):
    """manager.restore raises ``err`` whenever it is asked for ``item`` (the other items still read)."""
    real = ocp.CheckpointManager.restore

    def restore(self, step, *a, args=None, **kw):
        if args is not None and item in args:
            raise err
        return real(self, step, *a, args=args, **kw)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)


@pytest.mark.parametrize("err", [
    OSError(errno.EIO, "Input/output error"),
    PermissionError(errno.EACCES, "Permission denied"),
    MemoryError(),
    ValueError("PERMISSION_DENIED: Error opening file /x/d/abc"),
    ValueError("UNAVAILABLE: Error reading local file /x/d/abc: [OS error: Input/output error]"),
    ValueError('Error opening "zarr" driver: Error reading "params.g.w/.zarray": RESOURCE_EXHAUSTED: out of memory'),
], ids=["EIO", "EACCES", "MemoryError", "ts-permission", "ts-unavailable", "ts-nested-exhausted"])
def test_environment_errors_leave_every_checkpoint(workdir, monkeypatch, err):
    before = tree_snapshot(workdir / "checkpoints")
    _failing_restore(monkeypatch, err)
    with pytest.raises(CheckpointError, match="no proof of damage, so every checkpoint is left as it was") as exc:
        _restore(workdir)
    assert "\n" not in str(exc.value) and str(workdir / "checkpoints" / "4") in str(exc.value)
    _assert_untouched(workdir, before)


def test_restore_failing_on_intact_data_leaves_every_checkpoint(workdir, monkeypatch):
    """A data-looking restore error whose step passes the integrity check is not damage."""
    before = tree_snapshot(workdir / "checkpoints")
    _failing_restore(monkeypatch, ValueError("sharding does not fit the mesh"))
    with pytest.raises(CheckpointError, match="although its data reads back intact: every checkpoint is left"):
        _restore(workdir)
    _assert_untouched(workdir, before)


def test_io_error_in_the_integrity_check_leaves_every_checkpoint(workdir, monkeypatch):
    before = tree_snapshot(workdir / "checkpoints")
    _failing_restore(monkeypatch, ValueError("DATA_LOSS: checksum"))

    def read(self, *a, **kw):  # the integrity check's own read of the arrays
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", read)
    with pytest.raises(CheckpointError, match="checking its integrity failed .*no proof of damage"):
        _restore(workdir)
    _assert_untouched(workdir, before)


def test_io_error_reading_the_config_leaves_every_checkpoint(workdir, monkeypatch):
    before = tree_snapshot(workdir / "checkpoints")

    _failing_restore(monkeypatch, OSError(errno.EIO, "Input/output error"), item="config")
    with pytest.raises(CheckpointError, match="no proof of damage"):
        _restore(workdir)
    _assert_untouched(workdir, before)


def _assert_fell_back(workdir, saved, caplog, previous_before):
    with caplog.at_level(logging.WARNING):
        state, step = _restore(workdir)
    assert step == SAVED_STEPS[0]
    _assert_same(state.params, saved[1][step].params)
    assert "unreadable" in caplog.text and "trying the previous one" in caplog.text
    assert (workdir / "checkpoints" / "4.corrupt").is_dir() and not (workdir / "checkpoints" / "4").exists()
    after = tree_snapshot(workdir / "checkpoints")
    assert {k: v for k, v in after.items() if k.split(os.sep)[0] == "2"} == previous_before


def _previous(workdir):
    return {k: v for k, v in tree_snapshot(workdir / "checkpoints").items() if k.split(os.sep)[0] == "2"}


@pytest.mark.parametrize("how", ["garble", "truncate"])
def test_damaged_tensor_data_is_set_aside(workdir, saved, caplog, how):
    """Only the latest step's value files are hit: its metadata still reads, the restore and the integrity
    check fail with a data error."""
    previous = _previous(workdir)
    files = _data_files(workdir / "checkpoints" / "4")
    assert files
    for f in files:
        data = f.read_bytes()
        f.write_bytes(b"\0" * 16 if how == "garble" else data[: len(data) // 2])
    _assert_fell_back(workdir, saved, caplog, previous)


def test_garbled_metadata_is_set_aside(workdir, saved, caplog):
    previous = _previous(workdir)
    (workdir / "checkpoints" / "4" / "state" / "_METADATA").write_text("{garbage")
    _assert_fell_back(workdir, saved, caplog, previous)


def test_missing_config_item_is_set_aside(workdir, saved, caplog):
    previous = _previous(workdir)
    shutil.rmtree(workdir / "checkpoints" / "4" / "config")
    _assert_fell_back(workdir, saved, caplog, previous)


def test_nonfinite_state_on_disk_is_set_aside(workdir, saved, caplog):
    """Saves refuse non-finite state, so NaN on disk is damage (written here behind the Checkpointer's back)."""
    previous = _previous(workdir)
    c = _checkpointer(workdir, _config())
    bad = saved[1][4]
    bad = bad.replace(params={"g": {**bad.params["g"], "b": bad.params["g"]["b"].at[0].set(jnp.nan)}})
    shutil.rmtree(workdir / "checkpoints" / "4")
    c.manager.reload()
    c.manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(bad), config=ocp.args.JsonSave(c.config)),
                   force=True)
    c.close()
    previous = _previous(workdir)
    _assert_fell_back(workdir, saved, caplog, previous)


@pytest.mark.parametrize("force", [False, True])
def test_save_refuses_nonfinite_state_and_writes_nothing(tmp_path, force):
    c = _checkpointer(tmp_path, _config())
    state = _state(_config())
    bad = state.replace(opt_state=jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.inexact) else x,
                                               state.opt_state))
    with pytest.raises(CheckpointError, match=r"refusing to save step 6: the state is not finite") as exc:
        c.save(6, bad, None, force=force)
    assert "\n" not in str(exc.value)
    c.close()
    assert c.steps() == [] and not any((tmp_path / "checkpoints").iterdir())


def test_move_aside_on_several_processes_syncs_before_reloading(workdir, monkeypatch):
    """Process 0 renames; every process must wait for it before listing the steps again."""
    from jax.experimental import multihost_utils

    c = _checkpointer(workdir, _config())
    events = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b)))
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: events.append("barrier"))
    monkeypatch.setattr(c.manager, "reload", lambda: events.append("reload"))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    c._move_aside(4, ValueError("x"))
    monkeypatch.undo()
    c.close()
    assert events == ["rename", "barrier", "reload"]
    assert (workdir / "checkpoints" / "4.corrupt").is_dir()
