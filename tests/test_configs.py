"""audiosr_jax/configs/*.py load, round-trip to the model dataclasses, and the full preset is the released size."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from audiosr_jax.inference.checkpoint import abstract_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "audiosr_jax", "configs", f"{name}.py"))
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


def test_packaged_configs_are_found_by_name(tmp_path):
    """After a pip install there is no checkout: `--config=ldm:tiny` names the file shipped in the package; an
    existing path is left alone (and so is a name that is not ours, for ml_collections to report)."""
    import os

    from audiosr_jax.configs import CONFIG_DIR, resolve_config_flags

    ldm = os.path.join(CONFIG_DIR, "ldm.py")
    grid = os.path.join(CONFIG_DIR, "ablations", "schedule_x_param.py")
    assert resolve_config_flags(["train", "--config=ldm:tiny", "--workdir=w"]) == ["train", f"--config={ldm}:tiny",
                                                                                  "--workdir=w"]
    assert resolve_config_flags(["x", "--config", "ldm.py"]) == ["x", "--config", ldm]
    assert resolve_config_flags(["x", "--grid=ablations/schedule_x_param"]) == ["x", f"--grid={grid}"]
    mine = tmp_path / "ldm.py"
    mine.write_text("")
    assert resolve_config_flags([f"--config={mine}:tiny", "--config=nope:x"]) == [f"--config={mine}:tiny",
                                                                                 "--config=nope:x"]
    assert os.path.isfile(ldm) and os.path.isfile(grid)
