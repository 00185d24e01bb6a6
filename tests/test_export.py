"""training.export: fake stage workdirs (orbax checkpoints written by the training Checkpointer, no training)
→ one inference checkpoint that load_weights reads and the pipeline runs; the refusals."""

import logging
import os
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from audiosr_jax.cli.export import main
from audiosr_jax.diffusion.config import DiffusionConfig
from audiosr_jax.errors import CheckpointError
from audiosr_jax.inference.checkpoint import load_weights
from audiosr_jax.inference.pipeline import (
    SamplingOptions,
    draw_noise,
    generate,
    item_keys,
    latent_shape,
    num_sampler_steps,
)
from audiosr_jax.training import state as st
from audiosr_jax.training.checkpoints import Checkpointer
from audiosr_jax.training.export import _open_source, _scale_factor, export_weights

SCALE = 0.5
# the LDM run's diffusion settings (config.ldm), which the export must carry into the inference checkpoint
LDM_DIFFUSION = {"schedule": "linear_zero_snr", "schedule_kwargs": {"end": 0.015}, "num_timesteps": 600,
                 "parameterization": "eps"}


def _host_all_finite(*trees):
    return all(np.all(np.isfinite(np.asarray(x))) for t in trees for x in jax.tree.leaves(t))


def _write_workdir(path, params, config, ema_groups=(), ema=None, step=3):
    """A workdir as the training loop leaves it: one finished checkpoint (state + config), written by the
    training Checkpointer. Its jitted finiteness check takes ~10 s to compile for a UNet state: checked on
    the host instead."""
    txs = {g: optax.adam(1e-4) for g in params}
    state = st.create_state(params, txs, ema_groups)
    if ema is not None:
        state = state.replace(ema=ema)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(st, "all_finite", _host_all_finite)
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
    vae = _write_workdir(root / "vae",
                         {"vae": p["vae"], "loss": {"logvar": np.zeros((), np.float32)},
                          "discriminator": {"w": np.ones((3, 3), np.float32)}},
                         {"stage": "vae", "model": model, "ldm": {"scale_factor": 0.0, "vae_from": ""}})
    voc = _write_workdir(root / "vocoder",
                         {"generator": _perturb(p["vocoder"], 1e-3), "discriminator": {"w": np.ones((2,), np.float32)}},
                         {"stage": "vocoder", "model": model, "ldm": {"scale_factor": 0.0, "vae_from": ""}})
    unet_raw = _perturb(p["unet"], 1e-2)
    unet_ema = _perturb(p["unet"], 1e-3)
    ldm = _write_workdir(root / "ldm", {"unet": unet_raw},
                         {"stage": "ldm", "model": model,
                          "ldm": {"scale_factor": SCALE, "vae_from": vae, "weighting": "uniform", **LDM_DIFFUSION}},
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
    assert loaded.diffusion == w.diffusion == DiffusionConfig.from_dict(LDM_DIFFUSION)

    # a short condition through sampling (an ε-model on its own schedule), VAE decoding and the vocoder
    opts, frames = SamplingOptions(steps=2), 32
    noise = draw_noise(item_keys(0, [0], [0]), latent_shape(frames, loaded), num_sampler_steps(opts, loaded))
    mel = np.random.default_rng(0).normal(-5.0, 1.0, (1, frames, 256)).astype(np.float32)
    out = generate(loaded, jax.numpy.asarray(mel), noise, opts)
    assert out["waveform"].shape == (1, 480 * frames + 16) and np.all(np.isfinite(np.asarray(out["waveform"])))


def test_no_ema_and_cli(workdirs, tmp_path, capsys):
    out = tmp_path / "raw"
    code = main(["--vae", workdirs["vae"], "--ldm", workdirs["ldm"], "--vocoder", workdirs["vocoder"],
                 "--out", str(out), "--no-ema"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "scale_factor=0.5" in printed and "linear_zero_snr" in printed and "eps-prediction" in printed
    loaded = load_weights(out)
    _assert_tree_equal(loaded.params["unet"], workdirs["unet_raw"])
    assert "raw" in loaded.source
    # exists: refused without --overwrite (replacing it: test_mixed_with_converted_dir)
    args = ["--vae", workdirs["vae"], "--ldm", workdirs["ldm"], "--vocoder", workdirs["vocoder"], "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and err.count("\n") == 1


def test_mixed_with_converted_dir(workdirs, tiny_checkpoint_dir, tiny, tmp_path, caplog):
    out = tmp_path / "mixed"
    with caplog.at_level(logging.WARNING):
        w = export_weights(tiny_checkpoint_dir, workdirs["ldm"], tiny_checkpoint_dir, str(out))
    # the LDM says it was trained on the VAE workdir: a different path gives a warning, not an error
    assert any(workdirs["vae"] in m and tiny_checkpoint_dir in m for m in _warnings(caplog))
    loaded = load_weights(out)
    _assert_tree_equal(loaded.params["vocoder"], tiny.params["vocoder"])
    _assert_tree_equal(loaded.params["vae"], tiny.params["vae"])
    assert w.scale_factor == SCALE and w.diffusion.parameterization == "eps"  # the UNet's, from the LDM run

    # all three from the converted directory, replacing that output: the same weights and scale factor
    d = tiny_checkpoint_dir
    assert main(["--vae", d, "--ldm", d, "--vocoder", d, "--out", str(out), "--overwrite"]) == 0
    again = load_weights(out)
    assert again.scale_factor == tiny.scale_factor and "converted" in again.source
    assert again.diffusion == tiny.diffusion == DiffusionConfig()  # a converted directory's own (the release's)
    _assert_tree_equal(again.params, tiny.params)


def _one_line_error(fn, *match):
    with pytest.raises(CheckpointError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_errors(workdirs, tmp_path, tiny, tiny_checkpoint_dir):
    conv_dir = tiny_checkpoint_dir
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
    dummy = {"unet": {"w": np.zeros((2,), np.float32)}}  # refused from the config, before the weights are read
    # LDM trained on another VAE architecture
    other_vae = dict(model["vae"], ch=model["vae"]["ch"] * 2)
    ldm_other = _write_workdir(tmp_path / "ldm_other", dummy,
                               {"stage": "ldm", "model": dict(model, vae=other_vae),
                                "ldm": {"scale_factor": SCALE, "vae_from": v}}, ema_groups=("unet",))
    msg = _one_line_error(lambda: export_weights(v, ldm_other, g, out), ldm_other, v, "ch=")
    assert f"ch={other_vae['ch']}" in msg
    # scale factor never measured
    ldm_zero = _write_workdir(tmp_path / "ldm_zero", dummy,
                              {"stage": "ldm", "model": model, "ldm": {"scale_factor": 0.0, "vae_from": v}},
                              ema_groups=("unet",))
    _one_line_error(lambda: export_weights(v, ldm_zero, g, out), ldm_zero, "scale factor")
    # ... unless the run took it from a converted ldm.vae_from (stages.build_stage keeps 0 in the config then)
    ldm_conv = _write_workdir(tmp_path / "ldm_conv", dummy,
                              {"stage": "ldm", "model": model, "ldm": {"scale_factor": 0.0, "vae_from": conv_dir}})
    assert _scale_factor(_open_source(ldm_conv, "unet")) == pytest.approx(tiny.scale_factor)
    # diffusion settings the inference pipeline cannot follow
    ldm_diff = _write_workdir(tmp_path / "ldm_diff", dummy,
                              {"stage": "ldm", "model": model,
                               "ldm": {"scale_factor": SCALE, "vae_from": v, "parameterization": "score"}})
    _one_line_error(lambda: export_weights(v, ldm_diff, g, out), ldm_diff, "diffusion settings", "score")
    ldm_none = _write_workdir(tmp_path / "ldm_none", dummy,
                              {"stage": "ldm", "model": model}, ema_groups=("unet",))
    _one_line_error(lambda: export_weights(v, ldm_none, g, out), ldm_none, "scale factor")
    # weights that are not the saved architecture's
    ldm_bad = _write_workdir(tmp_path / "ldm_bad", dummy,
                             {"stage": "ldm", "model": model, "ldm": {"scale_factor": SCALE, "vae_from": v}},
                             ema_groups=("unet",))
    _one_line_error(lambda: export_weights(v, ldm_bad, g, out), ldm_bad, "unet parameters")
    unet = workdirs["p"]["unet"]
    conv = next(k for k in unet if "kernel" in unet[k])
    reshaped = dict(unet, **{conv: dict(unet[conv], kernel=np.zeros((1,) + unet[conv]["kernel"].shape[1:],
                                                                     np.float32))})
    ldm_shape = _write_workdir(tmp_path / "ldm_shape", {"unet": reshaped},
                               {"stage": "ldm", "model": model, "ldm": {"scale_factor": SCALE, "vae_from": v}})
    _one_line_error(lambda: export_weights(v, ldm_shape, g, out), ldm_shape, "has shape")
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

    r = subprocess.run([sys.executable, "-m", "audiosr_jax.cli.export", "--vae", workdirs["vae"], "--ldm",
                        str(tmp_path / "absent"), "--vocoder", workdirs["vocoder"], "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "absent" in r.stderr, r.stderr



def test_overwrite_refuses_a_folder_that_is_not_a_checkpoint(workdirs, tmp_path, capsys):
    """--out FOLDER --overwrite where FOLDER holds the user's files: one line, nothing deleted."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "model.bin").write_bytes(b"weights the user keeps")
    args = ["--vae", workdirs["vae"], "--ldm", workdirs["ldm"], "--vocoder", workdirs["vocoder"], "--out", str(out),
            "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an audiosr-jax checkpoint" in err
    assert os.listdir(out) == ["model.bin"] and (out / "model.bin").read_bytes() == b"weights the user keeps"
    f = tmp_path / "file"
    f.write_text("x")
    args[args.index(str(out))] = str(f)
    assert main(args) == 2 and "not a directory" in capsys.readouterr().err and f.read_text() == "x"


def test_sources_given_as_file_uris_and_an_object_store_out(workdirs, tmp_path, monkeypatch):
    """Workdirs named by URI are read where the URI points (not as a relative folder named "file:"); an
    inference checkpoint is written locally only, so a gs:// --out is one line before anything is read."""
    monkeypatch.chdir(tmp_path)  # a relative "file:" folder would appear here
    uri = {k: "file://" + str(Path(v).resolve()) for k, v in workdirs.items() if k in ("vae", "ldm", "vocoder")}
    w = export_weights(uri["vae"], uri["ldm"], uri["vocoder"], str(tmp_path / "out"), use_ema=False)
    _assert_tree_equal(load_weights(tmp_path / "out").params["unet"], workdirs["unet_raw"])
    assert w.scale_factor == SCALE and not (tmp_path / "file:").exists()
    _one_line_error(lambda: export_weights(uri["vae"], uri["ldm"], uri["vocoder"], "gs://bucket/weights"),
                    "gs://bucket/weights", "local folder")
