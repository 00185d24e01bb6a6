"""training.export: fake stage workdirs (orbax checkpoints written by the training Checkpointer, no training)
→ one inference checkpoint that load_weights reads and the pipeline runs; the refusals."""

import logging
import os

import jax
import numpy as np
import optax
import pytest

from audiosr_jax.checkpoint import load_weights
from audiosr_jax.errors import CheckpointError
from audiosr_jax.pipeline import SamplingOptions, super_resolve_waveform
from audiosr_jax.training import state as st
from audiosr_jax.training.checkpoints import Checkpointer
from audiosr_jax.training.export import export_weights, main

SCALE = 0.5


def _write_workdir(path, stage, params, config, ema_groups=(), ema=None, step=3):
    """A workdir as the training loop leaves it: one finished checkpoint (state + config)."""
    txs = {g: optax.adam(1e-4) for g in params}
    state = st.create_state(params, txs, ema_groups)
    if ema is not None:
        state = state.replace(ema=ema)
    ckpt = Checkpointer(str(path), config, save_every=1, keep=2, async_save=False)
    assert ckpt.save(step, state, None, force=True)
    ckpt.close()
    return str(path)


def _perturb(tree, scale):
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(1)
    return jax.tree.unflatten(treedef, [np.asarray(x) + scale * rng.standard_normal(np.shape(x)).astype(np.float32)
                                        for x in leaves])


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint_dir):
    return load_weights(tiny_checkpoint_dir)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("runs")
    model = {"vae": tiny.vae.to_dict(), "unet": tiny.unet.to_dict(), "vocoder": tiny.vocoder.to_dict()}
    p = jax.tree.map(np.asarray, tiny.params)
    vae = _write_workdir(root / "vae", "vae",
                         {"vae": p["vae"], "loss": {"logvar": np.zeros((), np.float32)},
                          "discriminator": {"w": np.ones((3, 3), np.float32)}},
                         {"stage": "vae", "model": model, "ldm": {"scale_factor": 0.0, "vae_from": ""}})
    voc = _write_workdir(root / "vocoder", "vocoder",
                         {"generator": _perturb(p["vocoder"], 1e-3), "discriminator": {"w": np.ones((2,), np.float32)}},
                         {"stage": "vocoder", "model": model, "ldm": {"scale_factor": 0.0, "vae_from": ""}})
    unet_raw = _perturb(p["unet"], 1e-2)
    unet_ema = _perturb(p["unet"], 1e-3)
    ldm = _write_workdir(root / "ldm", "ldm", {"unet": unet_raw},
                         {"stage": "ldm", "model": model, "ldm": {"scale_factor": SCALE, "vae_from": vae}},
                         ema_groups=("unet",), ema={"unet": unet_ema})
    return {"root": root, "vae": vae, "vocoder": voc, "ldm": ldm, "model": model, "p": p,
            "unet_raw": unet_raw, "unet_ema": unet_ema}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "audiosr_jax.training.export" and r.levelno >= logging.WARNING]


def _assert_tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(k))


def test_export_workdirs_ema_and_runs(workdirs, tiny, tmp_path, caplog):
    out = tmp_path / "export"
    with caplog.at_level(logging.WARNING):
        w = export_weights(workdirs["vae"], workdirs["ldm"], workdirs["vocoder"], str(out))
    assert not _warnings(caplog)  # vae_from matches --vae
    loaded = load_weights(out)
    assert loaded.scale_factor == SCALE == w.scale_factor
    assert (loaded.vae, loaded.unet, loaded.vocoder) == (tiny.vae, tiny.unet, tiny.vocoder)
    assert set(loaded.params) == {"vae", "unet", "vocoder"}
    _assert_tree_equal(loaded.params["vae"], workdirs["p"]["vae"])
    _assert_tree_equal(loaded.params["unet"], workdirs["unet_ema"])
    _assert_tree_equal(loaded.params["vocoder"], _perturb(workdirs["p"]["vocoder"], 1e-3))
    assert "EMA" in loaded.source and "step 3" in loaded.source

    # a short input through the whole inference pipeline
    rng = np.random.default_rng(0)
    n = 48000
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000) + 0.01 * rng.standard_normal(n))[None]
    wave = np.pad(wave, ((0, 0), (0, 245760 - n))).astype(np.float32)
    y, info = super_resolve_waveform(loaded, wave, {"samples": n}, SamplingOptions(steps=2))
    assert y.shape == (1, n) and np.all(np.isfinite(y))


def test_no_ema_and_cli(workdirs, tmp_path, capsys):
    out = tmp_path / "raw"
    code = main(["--vae", workdirs["vae"], "--ldm", workdirs["ldm"], "--vocoder", workdirs["vocoder"],
                 "--out", str(out), "--no-ema"])
    assert code == 0, capsys.readouterr().err
    assert "scale_factor=0.5" in capsys.readouterr().out
    loaded = load_weights(out)
    _assert_tree_equal(loaded.params["unet"], workdirs["unet_raw"])
    assert "raw" in loaded.source
    # exists: refused without --overwrite, replaced with it
    args = ["--vae", workdirs["vae"], "--ldm", workdirs["ldm"], "--vocoder", workdirs["vocoder"], "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and err.count("\n") == 1
    assert main(args + ["--overwrite"]) == 0
    _assert_tree_equal(load_weights(out).params["unet"], workdirs["unet_ema"])


def test_mixed_with_converted_dir(workdirs, tiny_checkpoint_dir, tiny, tmp_path, caplog):
    out = tmp_path / "mixed"
    with caplog.at_level(logging.WARNING):
        w = export_weights(tiny_checkpoint_dir, workdirs["ldm"], tiny_checkpoint_dir, str(out))
    # the LDM says it was trained on the VAE workdir: a different path gives a warning, not an error
    assert any(workdirs["vae"] in m and tiny_checkpoint_dir in m for m in _warnings(caplog))
    loaded = load_weights(out)
    _assert_tree_equal(loaded.params["vocoder"], tiny.params["vocoder"])
    _assert_tree_equal(loaded.params["vae"], tiny.params["vae"])
    assert w.scale_factor == SCALE

    # all three from the converted directory: the same weights and scale factor
    out2 = tmp_path / "converted"
    w2 = export_weights(tiny_checkpoint_dir, tiny_checkpoint_dir, tiny_checkpoint_dir, str(out2))
    assert w2.scale_factor == tiny.scale_factor
    _assert_tree_equal(load_weights(out2).params, tiny.params)


def _one_line_error(fn, *match):
    with pytest.raises(CheckpointError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_errors(workdirs, tmp_path, tiny):
    v, l, g = workdirs["vae"], workdirs["ldm"], workdirs["vocoder"]
    out = str(tmp_path / "o")
    missing = str(tmp_path / "nope")
    _one_line_error(lambda: export_weights(missing, l, g, out), missing, "--vae")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(lambda: export_weights(v, str(empty), g, out), str(empty), "checkpoints")
    (tmp_path / "nockpt" / "checkpoints").mkdir(parents=True)
    _one_line_error(lambda: export_weights(v, l, str(tmp_path / "nockpt"), out), "nockpt", "no finished checkpoint")
    # wrong family: a vocoder workdir given as --vae, a VAE workdir as --ldm
    _one_line_error(lambda: export_weights(g, l, g, out), g, "--vae")
    _one_line_error(lambda: export_weights(v, v, g, out), v, "--ldm")
    afile = tmp_path / "model.safetensors"
    afile.write_bytes(b"x")
    _one_line_error(lambda: export_weights(v, l, str(afile), out), str(afile), "convert")
    # output over a source
    _one_line_error(lambda: export_weights(v, l, g, l, overwrite=True), "--ldm")
    assert not os.path.exists(out)

    model = workdirs["model"]
    # LDM trained on another VAE architecture
    other_vae = dict(model["vae"], ch=model["vae"]["ch"] * 2)
    ldm_other = _write_workdir(tmp_path / "ldm_other", "ldm", {"unet": workdirs["p"]["unet"]},
                               {"stage": "ldm", "model": dict(model, vae=other_vae),
                                "ldm": {"scale_factor": SCALE, "vae_from": v}}, ema_groups=("unet",))
    msg = _one_line_error(lambda: export_weights(v, ldm_other, g, out), ldm_other, v, "ch=")
    assert f"ch={other_vae['ch']}" in msg
    # scale factor never measured
    ldm_zero = _write_workdir(tmp_path / "ldm_zero", "ldm", {"unet": workdirs["p"]["unet"]},
                              {"stage": "ldm", "model": model, "ldm": {"scale_factor": 0.0, "vae_from": v}},
                              ema_groups=("unet",))
    _one_line_error(lambda: export_weights(v, ldm_zero, g, out), ldm_zero, "scale factor")
    ldm_none = _write_workdir(tmp_path / "ldm_none", "ldm", {"unet": workdirs["p"]["unet"]},
                              {"stage": "ldm", "model": model}, ema_groups=("unet",))
    _one_line_error(lambda: export_weights(v, ldm_none, g, out), ldm_none, "scale factor")
    # params that do not match the saved architecture
    bad_unet = dict(model["unet"], model_channels=model["unet"]["model_channels"] * 2)
    ldm_bad = _write_workdir(tmp_path / "ldm_bad", "ldm", {"unet": workdirs["p"]["unet"]},
                             {"stage": "ldm", "model": dict(model, unet=bad_unet),
                              "ldm": {"scale_factor": SCALE, "vae_from": v}}, ema_groups=("unet",))
    _one_line_error(lambda: export_weights(v, ldm_bad, g, out), ldm_bad, "shape")
    assert not os.path.exists(out)


def test_cli_error_exit_code(workdirs, tmp_path, capsys):
    code = main(["--vae", str(tmp_path / "missing"), "--ldm", workdirs["ldm"], "--vocoder", workdirs["vocoder"],
                 "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err


def test_module_entry_point(workdirs, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "audiosr_jax.training.export", "--vae", workdirs["vae"], "--ldm",
                        str(tmp_path / "absent"), "--vocoder", workdirs["vocoder"], "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "absent" in r.stderr, r.stderr

