"""audiosr_jax/configs/*.py load, round-trip to the model dataclasses, and the full preset is the released size."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from audiosr_jax.inference.checkpoint import abstract_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_model_presets():
    models = _load("models")
    counts = {}
    for preset in ("full", "reduced", "tiny"):
        cfg = models.get_config(preset)
        vae, unet, voc = models.architectures(cfg)
        shapes = abstract_params(vae, unet, voc)
        counts[preset] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert counts["full"] == 258_195_088 + 90_010_272 + 133_523_969 + 1_056 + 272 + 190_281_889
    assert counts["full"] > counts["reduced"] > counts["tiny"]
    with pytest.raises(ValueError, match="unknown preset"):
        models.get_config("huge")


def test_overrides_reach_the_dataclasses():
    models = _load("models")
    cfg = models.get_config("reduced")
    cfg.unet.model_channels = 64
    _, unet, _ = models.architectures(cfg)
    assert unet.model_channels == 64 and unet.channel_mult == (1, 2, 3, 5)
