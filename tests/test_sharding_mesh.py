"""Meshes from the config (``sharding.make_mesh``: ICI axes, DCN axes over slices / processes) and the checks
``train()`` runs before anything is compiled or read: one ShardingError line naming the setting for a mesh
that does not fit the devices, rules naming a missing axis, and train / eval / micro-batch sizes that do not
split into whole shards. (The multi-process cases, a DCN mesh over 2 processes and a batch that does not span
them, run under the launcher in tests/test_multiprocess_train.py.)"""

import jax
import pytest

from audiosr_jax import sharding as shd
from audiosr_jax.configs import vae as vae_config
from audiosr_jax.training.loop import check_before_start, train

pytestmark = pytest.mark.skipif(len(jax.devices()) != 8, reason="needs the 8 fake devices of conftest.py")


def _config(**train_fields):
    """The tiny VAE config on all 8 devices, with an unreadable data set: a check that comes after any data
    read, or any compile, would fail otherwise (or take seconds)."""
    c = vae_config.get_config("tiny")
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.data.dataset_dir = "/nonexistent/data/set"
    c.train.update({**dict(batch_size=8, eval_batch_size=8), **train_fields})
    return c


def _refused(config, tmp_path, match: str) -> str:
    """train() raises ShardingError matching ``match`` (one line) and writes nothing; returns the message."""
    with pytest.raises(shd.ShardingError, match=match) as exc:
        train(config, str(tmp_path / "run"), progress=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()
    return str(exc.value)


def test_mesh_is_a_reshape_of_the_devices_on_cpu():
    mesh = shd.make_mesh((("data", -1), ("fsdp", 2), ("tensor", 1)))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]
    assert shd.process_grid(mesh).tolist() == [[[0], [0]]] * 4
    # a DCN factor of 1 (or -1 over the one process) is the plain mesh
    same = shd.make_mesh((("data", -1), ("fsdp", 2), ("tensor", 1)), dcn_axes=(("data", -1),))
    assert same.devices.tolist() == mesh.devices.tolist()


@pytest.mark.parametrize("mesh, dcn, message", [
    ((("data", 3), ("fsdp", -1)), (), r"^mesh \{'data': 3, 'fsdp': -1\} does not divide the 8 devices$"),
    ((("data", 2), ("fsdp", 2)), (), r"^mesh \{'data': 2, 'fsdp': 2\} needs 4 devices, there are 8$"),
    ((("data", -1), ("fsdp", -1)), (), r"^mesh .*: at most one axis may be -1$"),
    ((("data", 0), ("fsdp", -1)), (), r"^mesh .*: sizes must be >= 1 \(or one -1\)$"),
    ((("data", -1), ("data", 1)), (), r"^mesh \('data', 'data'\) repeats an axis name$"),
    ((("data", -1), ("fsdp", 1)), (("data", 2),), r"^mesh_dcn \{'data': 2, 'fsdp': 1\} needs 2 processes, there are 1$"),
    ((("data", -1), ("fsdp", 1)), (("model", 2),), r"^mesh_dcn names \['model'\], which mesh .* does not have$"),
], ids=["minus1-does-not-divide", "product-is-not-the-device-count", "two-minus1", "zero", "repeated-name",
        "dcn-needs-more-processes", "dcn-unknown-axis"])
def test_bad_mesh_is_refused_before_anything(mesh, dcn, message, tmp_path):
    c = _config()
    c.mesh, c.mesh_dcn = mesh, dcn
    _refused(c, tmp_path, message)


def test_rules_naming_a_missing_mesh_axis_are_refused(tmp_path):
    c = _config()
    c.sharding_rules = tuple(c.sharding_rules) + (("heads", "model"),)
    _refused(c, tmp_path, r"^sharding_rules map 'heads' to mesh axis 'model', which mesh "
                          r"\{'data': 8, 'fsdp': 1, 'tensor': 1\} lacks \(axes: data, fsdp, tensor\)$")


@pytest.mark.parametrize("fields, message", [
    (dict(batch_size=12), r"^train.batch_size 12 does not divide over the 8 data-parallel shards of mesh"),
    (dict(grad_accum=3), r"^train.grad_accum 3 does not divide train.batch_size 8$"),
    (dict(batch_size=16, grad_accum=4), r"^train.batch_size 16 / train.grad_accum 4 = micro-batch 4 does not "
                                        r"divide over the 8 data-parallel shards"),
    # the tiny VAE preset's eval_batch_size (2): without this check it failed at the first evaluation
    (dict(eval_batch_size=2), r"^train.eval_batch_size 2 does not divide over the 8 data-parallel shards"),
], ids=["train-batch", "grad-accum-divides-batch", "micro-batch", "eval-batch"])
def test_batch_that_does_not_split_into_shards_is_refused_before_anything(fields, message, tmp_path):
    _refused(_config(**fields), tmp_path, message)


def test_eval_batch_is_checked_only_when_evaluating():
    c = _config(eval_batch_size=2, eval_every=0)
    mesh = shd.mesh_from_config(c)
    rules = shd.rules_from_config(c.sharding_rules)
    check_before_start(c, mesh, rules)  # no evaluation: its batch size does not matter
    c.train.update(eval_every=100, eval_batches=0)
    check_before_start(c, mesh, rules)
    c.train.eval_batches = 2
    check_before_start(c, mesh, rules, eval_loader=False)  # the caller brings its own validation batches
    with pytest.raises(shd.ShardingError, match="train.eval_batch_size 2"):
        check_before_start(c, mesh, rules)


def test_batch_sharded_on_fsdp_counts_both_axes(tmp_path):
    c = _config(batch_size=4)
    c.mesh = (("data", 2), ("fsdp", 4), ("tensor", 1))
    _refused(c, tmp_path, r"^train.batch_size 4 does not divide over the 8 data-parallel shards of mesh "
                          r"\{'data': 2, 'fsdp': 4, 'tensor': 1\}$")
    c = _config(batch_size=4, eval_every=0)
    c.mesh = (("data", 4), ("fsdp", 1), ("tensor", 2))  # 4 batch shards: passes
    check_before_start(c, shd.mesh_from_config(c), shd.rules_from_config(c.sharding_rules))
