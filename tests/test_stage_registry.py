"""A training stage is one class implementing `stages.Stage` plus one registry line: the loop trains a stage it
has never heard of (a toy gain fit defined here), calls its `prepare` hook with the resumed run's saved config,
saves what `prepare` adds to the config, and export/fine-tuning find the stage that trains a network family."""

import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.configs import ldm as ldm_config
from audiosr_jax.errors import UserError
from audiosr_jax.training import stages
from audiosr_jax.training import state as st
from audiosr_jax.training.checkpoints import Checkpointer
from audiosr_jax.training.weights import read_trained_params

SLICE = Path(__file__).resolve().parent / "fixtures" / "corpus_slice"
TARGET = 0.5


class GainStage(stages.Stage):
    """Fits y = w · x to 0.5 · x on the batch audio; `prepare` records what it was given."""

    name = "gain"
    groups = ("gain",)
    ema_groups = ()
    families = {"gain_net": "gain"}
    prepared: list = []

    @classmethod
    def from_config(cls, config):
        return cls(), {"offset": np.float32(0.0)}

    def init(self, key, batch_shape):
        return {"gain": {"w": jnp.zeros((), jnp.float32)}}

    def _loss(self, params, frozen, batch):
        x = batch["audio"]
        return jnp.mean((params["w"] * x + frozen["offset"] - TARGET * x) ** 2) / jnp.mean(x**2)

    def train_step(self, state, frozen, batch, txs):
        loss, grads = jax.value_and_grad(self._loss)(state.params["gain"], frozen, batch)
        new = st.apply_group(state, "gain", grads, txs["gain"])
        finite = jnp.isfinite(loss)
        return st.finish_step(state, new, finite), {"loss": loss, "finite": finite}

    def eval_step(self, state, frozen, batch, key):
        return {"loss": self._loss(state.params["gain"], frozen, batch)}

    def prepare(self, frozen, batch, key, saved_config):
        type(self).prepared.append(saved_config)
        return {"offset": np.float32(0.0)}, {"gain": {"prepared_runs": len(type(self).prepared)}}


@pytest.fixture
def gain_registered(monkeypatch):
    module = types.ModuleType("audiosr_jax_test_gain_stage")
    module.GainStage = GainStage
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(stages.REGISTRY, "gain", f"{module.__name__}:GainStage")
    GainStage.prepared = []
    return GainStage


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from audiosr_jax.data.segments import SegmentConfig, build_dataset

    return build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, tmp_path_factory.mktemp("tfds"),
                         config=SegmentConfig(segment_seconds=0.32, validation_fraction=0.3))


def _config(dataset, total_steps):
    c = ldm_config.get_config("tiny")
    c.stage = "gain"
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.data.dataset_dir = str(dataset)
    c.data.crop_samples = 3_840
    c.optim.update(lr=0.1, warmup_steps=0, weight_decay=0.0)
    c.train.update(total_steps=total_steps, batch_size=8, log_every=1, eval_every=0, save_every=2,
                   keep_checkpoints=2, async_checkpoints=False)
    return c


def test_the_loop_trains_a_registered_stage_and_resumes_it(gain_registered, dataset, tmp_path):
    from audiosr_jax.training.loop import train

    workdir = str(tmp_path / "run")
    first = train(_config(dataset, 4), workdir, progress=False)
    assert first["step"] == 4 and gain_registered.prepared == [None]  # a fresh run: no saved config
    resumed = train(_config(dataset, 8), workdir, progress=False)
    assert resumed["step"] == 8
    saved = gain_registered.prepared[1]
    assert saved is not None and saved["stage"] == "gain" and saved["gain"] == {"prepared_runs": 1}

    ckpt = Checkpointer(workdir, _config(dataset, 8).to_dict(), save_every=2, keep=2, async_save=False)
    try:
        assert ckpt.steps()[-1] == 8
        assert ckpt.saved_config(8)["gain"] == {"prepared_runs": 2}  # prepare's update, saved with the run
    finally:
        ckpt.close()
    w = float(read_trained_params(workdir, "gain", prefer_ema=False)[0]["w"])
    # Adam at lr 0.1 from 0 towards 0.5: 8 steps of at most 0.1 each, every one towards the target
    assert 0.3 < w <= 0.8, w
    assert resumed["loss"] < 0.5 * 0.25  # started at (0 - 0.5)^2 = 0.25


def test_a_stage_is_chosen_by_name_and_found_by_family(gain_registered):
    assert stages.stage_class("gain") is GainStage
    assert stages.trained_by("gain_net") == ("gain", "gain")
    assert stages.trained_by("unet") == ("ldm", "unet") and stages.trained_by("vocoder") == ("vocoder", "generator")
    with pytest.raises(UserError, match="unknown stage 'nope'; choose one of vae, vocoder, ldm, distill, gain"):
        stages.stage_class("nope")


def test_the_loop_names_no_stage():
    """loop.py and export.py reach stages only through the Protocol and the registry."""
    root = Path(stages.__file__).parent
    loop = (root / "loop.py").read_text()
    for word in ("config.stage ==", '"ldm"', '"vae"', '"vocoder"', "LDMStage", "VAEStage", "VocoderStage", "scale_factor"):
        assert word not in loop, word
    export = (root / "export.py").read_text()
    for word in ("stage ==", "LDMStage", "VAEStage", "VocoderStage", '("ldm", "unet"'):
        assert word not in export, word
