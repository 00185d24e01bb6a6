"""The training loop end to end on a tiny LDM over a real-audio dataset (the corpus slice): resume equals an
uninterrupted run (in-process, and after kill -9 at random points), SIGTERM saves and exits, and bad
config/state is refused or recovered with a clear message."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from audiosr_jax.errors import CheckpointError
from audiosr_jax.sharding import ShardingError
from audiosr_jax.training.loop import train
from audiosr_jax.training.stages import read_trained_params
from audiosr_jax.configs import ldm as ldm_config

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "fixtures" / "corpus_slice"
STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def _xla_cache():
    from audiosr_jax.runtime import enable_compilation_cache

    enable_compilation_cache()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from audiosr_jax.data.segments import SegmentConfig, build_dataset

    out = tmp_path_factory.mktemp("tfds")
    return build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, out,
                         config=SegmentConfig(segment_seconds=0.64, validation_fraction=0.3))


def _config(dataset, vae_dir, **train):
    c = ldm_config.get_config("tiny")
    c.mesh = (("data", 4), ("fsdp", 2), ("tensor", 1))
    c.ldm.vae_from = str(vae_dir)
    c.data.dataset_dir = str(dataset)
    c.data.crop_samples = 15_360
    c.train.update({**dict(total_steps=STEPS, batch_size=8, log_every=1, eval_every=0, save_every=2,
                           keep_checkpoints=2), **train})
    return c


def _params(workdir):
    return read_trained_params(str(workdir), "unet", prefer_ema=False)[0]


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(dataset, tiny_checkpoint_dir, tmp_path_factory):
    wd = tmp_path_factory.mktemp("run_full")
    last = train(_config(dataset, tiny_checkpoint_dir), str(wd), progress=False)
    assert last["step"] == STEPS and np.isfinite(last["loss"])
    return wd


def test_resume_in_process_equals_uninterrupted(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path):
    cfg = _config(dataset, tiny_checkpoint_dir)
    assert train(cfg, str(tmp_path), stop_after=3, progress=False)["step"] == 3
    assert train(cfg, str(tmp_path), progress=False)["step"] == STEPS
    _assert_same(_params(tmp_path), _params(uninterrupted))
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"


def _launch(dataset, vae_dir, workdir):
    args = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "audiosr_jax" / "configs" / "ldm.py") + ":tiny",
            "--workdir", str(workdir), f"--config.ldm.vae_from={vae_dir}", f"--config.data.dataset_dir={dataset}",
            "--config.data.crop_samples=15360", f"--config.train.total_steps={STEPS}", "--config.train.batch_size=8",
            "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.save_every=2",
            "--config.train.keep_checkpoints=2", "--config.mesh=(('data', 4), ('fsdp', 2), ('tensor', 1))"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(workdir, min_step, proc, timeout=240):
    t0 = time.time()
    ckpts = Path(workdir) / "checkpoints"
    while time.time() - t0 < timeout and proc.poll() is None:
        steps = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= min_step:
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_equals_uninterrupted(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path):
    rnd = random.Random(0)
    for target in (1, 3, 4):
        proc = _launch(dataset, tiny_checkpoint_dir, tmp_path)
        _wait_for_step(tmp_path, target, proc)
        time.sleep(rnd.uniform(0.0, 0.5))  # somewhere inside a step or a save
        proc.kill()
        proc.wait()
    proc = _launch(dataset, tiny_checkpoint_dir, tmp_path)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    _assert_same(_params(tmp_path), _params(uninterrupted))


@pytest.mark.slow
def test_sigterm_saves_and_exits(dataset, tiny_checkpoint_dir, tmp_path):
    proc = _launch(dataset, tiny_checkpoint_dir, tmp_path)
    _wait_for_step(tmp_path, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "saving a checkpoint and stopping" in out
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").glob("*") if p.name.isdigit())
    assert steps and steps[-1] >= 2


def test_other_config_in_workdir_is_refused(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(uninterrupted, wd)
    before = sorted(p.name for p in (wd / "checkpoints").iterdir())
    cfg = _config(dataset, tiny_checkpoint_dir)
    cfg.model.unet.model_channels = 64
    with pytest.raises(CheckpointError, match="another config.*model.unet.model_channels is 32 there and 64 here"):
        train(cfg, str(wd), progress=False)
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == before


def test_corrupt_latest_checkpoint_falls_back(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path, caplog):
    wd = tmp_path / "wd"
    shutil.copytree(uninterrupted, wd)
    latest = max(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    for f in (wd / "checkpoints" / str(latest) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(b"\0" * 16)  # truncate the array data
    cfg = _config(dataset, tiny_checkpoint_dir)
    cfg.train.total_steps = STEPS + 1
    last = train(cfg, str(wd), stop_after=1, progress=False)
    assert "unreadable" in caplog.text and "trying the previous one" in caplog.text
    assert (wd / "checkpoints" / f"{latest}.corrupt").exists()
    assert last["step"] == latest - 2 + 1  # resumed from the previous kept step (save_every 2)


def test_bad_mesh_and_batch(dataset, tiny_checkpoint_dir, tmp_path):
    cfg = _config(dataset, tiny_checkpoint_dir)
    cfg.mesh = (("data", 3), ("fsdp", -1))
    with pytest.raises(ShardingError, match="does not divide the 8 devices"):
        train(cfg, str(tmp_path), progress=False)
    cfg = _config(dataset, tiny_checkpoint_dir, batch_size=12)
    with pytest.raises(ShardingError, match="train.batch_size 12 does not divide over the 8"):
        train(cfg, str(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
