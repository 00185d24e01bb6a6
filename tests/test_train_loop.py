"""The training loop end to end on a tiny LDM over a real-audio dataset (the corpus slice): resume equals an
uninterrupted run (in-process, and after kill -9 at random points; each resume is checked to be one, from
the latest checkpoint), SIGTERM saves and exits, bad config/state is refused or recovered with a clear
message (another optimizer setting: refused, every checkpoint left byte-for-byte; damaged tensor data: set
aside, the previous step restored), and a streak of non-finite steps stops the run."""

import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from fs_snapshot import tree_snapshot

from audiosr_jax.configs import ldm as ldm_config
from audiosr_jax.errors import CheckpointError
from audiosr_jax.sharding import ShardingError
from audiosr_jax.training.loop import train
from audiosr_jax.training.weights import read_trained_params

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


def _steps(workdir) -> list[int]:
    ckpts = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def _resumed_from(log_text: str) -> list[int]:
    return [int(m) for m in re.findall(r"resumed from step (\d+)", log_text)]


@pytest.fixture(scope="module")
def uninterrupted(dataset, tiny_checkpoint_dir, tmp_path_factory):
    wd = tmp_path_factory.mktemp("run_full")
    last = train(_config(dataset, tiny_checkpoint_dir), str(wd), progress=False)
    assert last["step"] == STEPS and np.isfinite(last["loss"])
    return wd


def test_resume_in_process_equals_uninterrupted(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path, caplog):
    cfg = _config(dataset, tiny_checkpoint_dir)
    assert train(cfg, str(tmp_path), stop_after=3, progress=False)["step"] == 3
    assert 3 in _steps(tmp_path)  # the stop saved step 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="audiosr_jax.training.loop"):
        # a restart from 0 would stop at step 3: only a resume reaches STEPS
        assert train(cfg, str(tmp_path), stop_after=STEPS - 3, progress=False)["step"] == STEPS
    assert _resumed_from(caplog.text) == [3]
    _assert_same(_params(tmp_path), _params(uninterrupted))
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"


def _launch(dataset, vae_dir, workdir, save_every=2):
    args = [sys.executable, str(ROOT / "train.py"), "--config",
            str(ROOT / "audiosr_jax" / "configs" / "ldm.py") + ":tiny",
            "--workdir", str(workdir), f"--config.ldm.vae_from={vae_dir}", f"--config.data.dataset_dir={dataset}",
            "--config.data.crop_samples=15360", f"--config.train.total_steps={STEPS}", "--config.train.batch_size=8",
            "--config.train.log_every=1", "--config.train.eval_every=0", f"--config.train.save_every={save_every}",
            "--config.train.keep_checkpoints=2", "--config.mesh=(('data', 4), ('fsdp', 2), ('tensor', 1))"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_step(workdir, min_step, proc, timeout=240) -> bool:
    """Whether a checkpoint >= min_step appeared while ``proc`` was running (False on exit or timeout)."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        steps = _steps(workdir)
        if steps and max(steps) >= min_step:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_equals_uninterrupted(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path):
    rnd = random.Random(0)
    for i, target in enumerate((2, 4)):
        at_launch = _steps(tmp_path)
        # every run makes new progress before it is killed (not killed at start-up on an old checkpoint), and
        # stays short of the last step (so it is still running); a checkpoint every step
        target = max([target, *(s + 1 for s in at_launch)])
        if target >= STEPS:
            break
        proc = _launch(dataset, tiny_checkpoint_dir, tmp_path, save_every=1)
        reached = _wait_for_step(tmp_path, target, proc)
        time.sleep(rnd.uniform(0.0, 0.5))  # somewhere inside a step or a save
        alive = proc.poll() is None
        proc.kill()
        out, _ = proc.communicate()
        assert reached and alive, f"run {i} ended before it could be killed at step >= {target}: {out[-3000:]}"
        # every run after the first resumed from the latest checkpoint there was, not from scratch
        assert _resumed_from(out) == ([max(at_launch)] if at_launch else []), (at_launch, out[-3000:])
    at_launch = _steps(tmp_path)
    assert at_launch and max(at_launch) >= 4
    proc = _launch(dataset, tiny_checkpoint_dir, tmp_path)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    assert _resumed_from(out) == [max(at_launch)], (at_launch, out[-3000:])
    _assert_same(_params(tmp_path), _params(uninterrupted))


@pytest.mark.slow
def test_sigterm_saves_and_exits(dataset, tiny_checkpoint_dir, tmp_path):
    proc = _launch(dataset, tiny_checkpoint_dir, tmp_path)
    assert _wait_for_step(tmp_path, 2, proc) and proc.poll() is None
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


def test_optimizer_change_is_refused_and_every_checkpoint_is_left(dataset, tiny_checkpoint_dir, uninterrupted,
                                                                   tmp_path):
    """Gradient clipping switched on changes the optimizer state's tree: one line naming the leaf and the
    setting; the step directories are byte-for-byte as they were and nothing is set aside."""
    wd = tmp_path / "wd"
    shutil.copytree(uninterrupted, wd)
    before = tree_snapshot(wd / "checkpoints")
    cfg = _config(dataset, tiny_checkpoint_dir)
    cfg.optim.clip_norm = 1.0
    with pytest.raises(CheckpointError) as exc:
        train(cfg, str(wd), progress=False)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert re.search(r"checkpoints/6: holds optimizer state of another structure \(opt_state/unet/\S+ is not in the "
                     r"checkpoint.*\); it was saved with optim.clip_norm=None and this run has optim.clip_norm=1.0", msg), msg
    assert tree_snapshot(wd / "checkpoints") == before
    assert not [p for p in (wd / "checkpoints").iterdir() if "corrupt" in p.name]


def test_corrupt_latest_checkpoint_falls_back(dataset, tiny_checkpoint_dir, uninterrupted, tmp_path, caplog):
    """Only the latest step's tensor value files are garbled (its metadata still reads): the restore and the
    integrity check fail on the data, the step is set aside, the previous one (untouched) is restored."""
    wd = tmp_path / "wd"
    shutil.copytree(uninterrupted, wd)
    latest, previous = _steps(wd)[-1], _steps(wd)[-2]
    data_files = [f for f in (wd / "checkpoints" / str(latest) / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data_files
    for f in data_files:
        f.write_bytes(b"\0" * 16)  # truncate the array data
    previous_before = tree_snapshot(wd / "checkpoints" / str(previous))
    cfg = _config(dataset, tiny_checkpoint_dir)
    cfg.train.total_steps = STEPS + 1
    with caplog.at_level(logging.INFO):
        last = train(cfg, str(wd), stop_after=1, progress=False)
    assert "unreadable" in caplog.text and "trying the previous one" in caplog.text
    assert (wd / "checkpoints" / f"{latest}.corrupt").exists()
    assert _resumed_from(caplog.text) == [previous]
    assert last["step"] == previous + 1
    # the previous step was read, not rewritten (its data files are the same bytes)
    after = tree_snapshot(wd / "checkpoints" / str(previous))
    assert {k: v[2] for k, v in after.items() if v != "dir"} == {k: v[2] for k, v in previous_before.items() if v != "dir"}


class _PoisonedIterator:
    """The loader, with NaN audio in the batches of the given (1-based) steps; checkpointable like it."""

    def __init__(self, inner, bad_steps):
        self.inner, self.bad, self.n = inner, set(bad_steps), 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        self.n += 1
        if self.n in self.bad:
            audio = batch["audio"]
            batch = {**batch, "audio": jax.device_put(np.full(audio.shape, np.nan, audio.dtype), audio.sharding)}
        return batch

    def checkpoint_args(self):
        return self.inner.checkpoint_args()

    def restore_args(self):
        return self.inner.restore_args()


def test_nonfinite_streak_stops_the_run(dataset, tiny_checkpoint_dir, tmp_path):
    """train.max_consecutive_nonfinite = 2 NaN batches in a row stop the run with one line, even when they fall
    between log steps (log_every 3) and a good step follows."""
    from audiosr_jax import sharding as shd
    from audiosr_jax.training import data as train_data
    from audiosr_jax.training.loop import TrainingError

    cfg = _config(dataset, tiny_checkpoint_dir, log_every=3, max_consecutive_nonfinite=2)
    mesh = shd.make_mesh(cfg.mesh)
    it = _PoisonedIterator(train_data.make_train_iterator(cfg, mesh, shd.rules_from_config(cfg.sharding_rules)), {1, 2})
    with pytest.raises(TrainingError, match=r"^stopping at step 2: 2 consecutive steps had a non-finite loss or "
                                            r"gradient \(every one skipped; the last checkpoint is finite\)$"):
        train(cfg, str(tmp_path), train_iter=it, progress=False)


def test_bad_mesh_and_batch(dataset, tiny_checkpoint_dir, tmp_path):
    cfg = _config(dataset, tiny_checkpoint_dir)
    cfg.mesh = (("data", 3), ("fsdp", -1))
    with pytest.raises(ShardingError, match="does not divide the 8 devices"):
        train(cfg, str(tmp_path), progress=False)
    cfg = _config(dataset, tiny_checkpoint_dir, batch_size=12)
    with pytest.raises(ShardingError, match="train.batch_size 12 does not divide over the 8"):
        train(cfg, str(tmp_path), progress=False)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
