"""A workdir and a dataset dir given as URIs (``gs://bucket/run`` on a TPU pod; here, offline, ``file://``):
nothing goes through ``os.path.abspath`` (which makes ``<cwd>/file:/...`` or ``<cwd>/gs:/...``, a local folder on
every host). A real tiny VAE training on a ``file://`` workdir and ``file://`` dataset dir writes its
checkpoints and TensorBoard events into the folder the URI names and nothing into the current directory,
resumes from there, and a damaged latest checkpoint is set aside inside that workdir and the previous one
restored. Unit tests: the path helper (relative -> absolute, ``gs://`` untouched and never stat'ed,
``file://`` -> its local path), the TensorBoard writer on an object store (through epath, no local folder),
a dataset build refused on an object store."""

import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from audiosr_jax import paths

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "fixtures" / "corpus_slice"


@pytest.fixture(scope="module", autouse=True)
def _rbg_prng():
    """RBG keys: cheaper to compile than threefry (the run and the restore's abstract state both use them)."""
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
    yield
    jax.config.update("jax_default_prng_impl", old)


# ------------------------------------------------------------------------------------------- path helper


def test_resolve_makes_local_paths_absolute_and_leaves_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.resolve("run/a")) == str(tmp_path / "run" / "a")
    assert str(paths.resolve(Path("run"))) == str(tmp_path / "run")
    assert str(paths.resolve("/abs/run/")) == "/abs/run"
    # file:// names the local disk: the plain absolute path (percent-decoded), never <cwd>/file:/...
    assert str(paths.resolve("file:///abs/run")) == "/abs/run"
    assert str(paths.resolve("file://localhost/abs/my%20run")) == "/abs/my run"
    assert str(paths.resolve(tmp_path.as_uri()) / "checkpoints") == str(tmp_path / "checkpoints")
    with pytest.raises(paths.UnsupportedPathError, match="must name this machine"):
        paths.resolve("file://otherhost/abs/run")

    def local(*a, **k):
        raise AssertionError(f"a URI went to the local file system: {a}")

    # an object store URI is neither made absolute nor stat'ed
    for fn in ("abspath", "exists", "isdir", "realpath"):
        monkeypatch.setattr(os.path, fn, local)
    monkeypatch.setattr(os, "stat", local)
    monkeypatch.setattr(os, "getcwd", local)
    p = paths.resolve("gs://b/x")
    assert str(p) == "gs://b/x" and str(p / "checkpoints" / "4") == "gs://b/x/checkpoints/4"
    assert str(paths.resolve("GS://b/x")) == "gs://b/x"
    assert str(paths.resolve(p)) == "gs://b/x"  # an epath.Path of a URI stays one
    monkeypatch.undo()
    assert paths.is_remote("gs://b/x") and not paths.is_remote("file:///x") and not paths.is_remote("x")
    with pytest.raises(paths.UnsupportedPathError, match="unsupported URI scheme memory://"):
        paths.resolve("memory://b/x")


def test_summary_writer_on_an_object_store_writes_through_epath(tmp_path, monkeypatch):
    """tensorboardX's own gs:// writer needs google-cloud-storage (absent here); the writer goes through epath.
    epath's object-store writes are captured (no network): one event file under gs://b/run/tb, nothing local."""
    from etils.epath import gpath

    from audiosr_jax.training.summary import SummaryWriter

    monkeypatch.chdir(tmp_path)
    uploads = {}
    write_bytes, mkdir = gpath.PosixGPath.write_bytes, gpath.PosixGPath.mkdir

    def fake_write_bytes(self, data):
        if not str(self).startswith("gs://"):
            return write_bytes(self, data)
        uploads[str(self)] = bytes(data)
        return len(data)

    def fake_mkdir(self, *a, **k):
        return None if str(self).startswith("gs://") else mkdir(self, *a, **k)

    monkeypatch.setattr(gpath.PosixGPath, "write_bytes", fake_write_bytes)
    monkeypatch.setattr(gpath.PosixGPath, "mkdir", fake_mkdir)
    w = SummaryWriter("gs://b/run", enabled=True)
    w.scalars(3, {"train/loss": 0.5})
    w.close()
    assert len(uploads) == 1, uploads.keys()
    name, data = next(iter(uploads.items()))
    assert name.startswith("gs://b/run/tb/events.out.tfevents.") and b"train/loss" in data
    assert not list(tmp_path.iterdir())


def test_epath_record_file_rewrites_the_whole_file_when_written(tmp_path):
    from etils import epath

    from audiosr_jax.training.summary import EpathRecordFile

    path = tmp_path / "events"
    f = EpathRecordFile(epath.Path(path))
    f.write(b"ab")
    f.flush()
    assert path.read_bytes() == b"ab"
    f.write(b"c")
    f.flush()
    assert path.read_bytes() == b"abc"
    path.write_bytes(b"changed")  # nothing new since the last flush: not rewritten
    f.flush()
    f.close()
    assert path.read_bytes() == b"changed"


def test_building_a_dataset_on_an_object_store_is_refused(tmp_path, monkeypatch):
    from audiosr_jax.data.segments import DatasetError, build_dataset

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="built on the local disk"):
        build_dataset({"speech": [SLICE / "speech"]}, "gs://b/tfds")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- a real run on a file:// workdir


def _vae_config(dataset_uri: str):
    """The tiny VAE stage cut down (one downsample, no GAN term, 16-frame crops) on the 8 fake devices."""
    from audiosr_jax.configs import vae as vae_config

    c = vae_config.get_config("tiny")
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.model.vae.ch_mult = [1, 1]
    c.vae.adversarial = False
    c.vae.disc.n_layers = 2  # the PatchGAN still has params (never updated): 2 layers fit 16 frames
    c.data.crop_samples = 7_680
    c.data.dataset_dir = dataset_uri
    c.train.update(total_steps=2, batch_size=8, log_every=1, eval_every=0, save_every=1, keep_checkpoints=3,
                   async_checkpoints=False)
    return c


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def uri_run(tmp_path_factory):
    """Two calls of ``train`` on ``workdir=file://<tmp>/run`` with ``dataset_dir=file://<tfds version dir>``,
    run from an empty current directory: the first stops after step 1 (checkpoint 1), the second resumes
    and saves step 2."""
    from audiosr_jax.data.segments import SegmentConfig, build_dataset
    from audiosr_jax.training.loop import train

    tmp = tmp_path_factory.mktemp("uri")
    dataset = build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, tmp / "tfds",
                            config=SegmentConfig(segment_seconds=0.32, validation_fraction=0.3))
    cwd, real = tmp / "cwd", tmp / "run"
    cwd.mkdir()
    uri = real.as_uri()
    assert uri.startswith("file:///")
    config = _vae_config(Path(dataset).as_uri())
    messages = _Messages()
    loop_log = logging.getLogger("audiosr_jax.training.loop")
    old_level = loop_log.level
    loop_log.addHandler(messages)
    loop_log.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(cwd)
            first = train(config, uri, stop_after=1, progress=False)
            steps_after_first = sorted(p.name for p in (real / "checkpoints").iterdir()) \
                if (real / "checkpoints").is_dir() else []
            second = train(config, uri, stop_after=1, progress=False)
    finally:
        loop_log.removeHandler(messages)
        loop_log.setLevel(old_level)
    return {"tmp": tmp, "cwd": cwd, "real": real, "uri": uri, "config": config, "first": first, "second": second,
            "steps_after_first": steps_after_first, "log": messages.lines}


def test_training_writes_into_the_folder_the_file_uri_names(uri_run):
    real, cwd = uri_run["real"], uri_run["cwd"]
    assert not list(cwd.iterdir()), f"written into the current directory: {list(cwd.iterdir())}"
    assert not [p for p in uri_run["tmp"].rglob("file:*")]
    assert uri_run["steps_after_first"] == ["1"]
    assert sorted(p.name for p in (real / "checkpoints").iterdir()) == ["1", "2"]
    assert list((real / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file in the workdir"
    assert np.isfinite(uri_run["first"]["loss"]) and np.isfinite(uri_run["second"]["loss"])


def test_training_resumes_from_a_file_uri_workdir(uri_run):
    assert uri_run["first"]["step"] == 1
    resumed = [m.split(" in ")[0] for m in uri_run["log"] if m.startswith("resumed from step")]
    assert resumed == ["resumed from step 1"]  # the second call restored the step the first one saved
    assert uri_run["second"]["step"] == 2  # and went on from it (a fresh start would have stopped at step 1)


def test_damaged_latest_checkpoint_is_set_aside_inside_the_file_uri_workdir(uri_run, tmp_path, monkeypatch):
    """Step 2's tensor data truncated: the restore (through the URI) falls back to step 1 and renames step 2
    to 2.corrupt beside it, in the folder the URI names; step 1 is left as it was."""
    from audiosr_jax import sharding as shd
    from audiosr_jax.training.checkpoints import Checkpointer
    from audiosr_jax.training.loop import prepare_step

    real = tmp_path / "run"
    shutil.copytree(uri_run["real"], real)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ckpts = real / "checkpoints"
    data = [f for f in (ckpts / "2" / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data
    for f in data:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    before = {p: p.read_bytes() for p in (ckpts / "1").rglob("*") if p.is_file()}

    config = uri_run["config"]
    mesh = shd.make_mesh(tuple(tuple(a) for a in config.mesh))
    setup = prepare_step(config, mesh, shd.rules_from_config(config.sharding_rules))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), setup.abstract,
                            setup.state_sh)
    ckpt = Checkpointer(real.as_uri(), config.to_dict(), save_every=1, keep=3, async_save=False)
    assert str(ckpt.directory) == str(ckpts)
    try:
        state, step = ckpt.restore(abstract, None)
    finally:
        ckpt.close()
    assert step == 1 and state is not None and int(state.step) == 1
    assert sorted(p.name for p in ckpts.iterdir()) == ["1", "2.corrupt"]
    assert {p: p.read_bytes() for p in (ckpts / "1").rglob("*") if p.is_file()} == before
    assert not list(cwd.iterdir())


def test_inference_checkpoints_named_by_uri(tiny_checkpoint_dir, tmp_path, monkeypatch):
    """load_weights reads a checkpoint named by a file:// URI where it points; a gs:// name is never taken
    for a hub model name or a local path."""
    from audiosr_jax.inference.checkpoint import load_weights
    from audiosr_jax.inference.pretrained import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    a = load_weights(tiny_checkpoint_dir)
    b = load_weights("file://" + os.path.abspath(tiny_checkpoint_dir))
    assert b.directory == os.path.abspath(tiny_checkpoint_dir)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resolve_checkpoint("gs://bucket/ckpt") == "gs://bucket/ckpt"
    assert resolve_checkpoint("file://" + os.path.abspath(tiny_checkpoint_dir)) == os.path.abspath(tiny_checkpoint_dir)
    assert not list(tmp_path.iterdir())  # nothing named "file:" or "gs:" appeared here
