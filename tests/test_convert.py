"""The checkpoint converter: formats, architecture inference, key accounting, bad files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fs_snapshot import tree_snapshot

from audiosr_jax.convert import convert_file, convert_state_dict
from audiosr_jax.convert.core import COND_VAE, UNET, VAE
from audiosr_jax.errors import CheckpointError
from audiosr_jax.inference.checkpoint import load_weights, save_weights
from audiosr_jax.lab.testing import (
    WIDTHS,
    synthetic_torch_checkpoint,
    torch_shapes,
    write_synthetic_checkpoint,
)
from audiosr_jax.models.unet import UNetConfig
from audiosr_jax.models.vae import VAEConfig
from audiosr_jax.models.vocoder import VocoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_sd():
    return synthetic_torch_checkpoint("tiny")


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


def test_full_inference_subset_matches_reference_counts():
    shapes = torch_shapes(VAEConfig(), UNetConfig(), VocoderConfig())
    # docs/design.md §Parameter counts: 1,614 keys / 672,015,547 elements incl. scale_factor and 3 schedule buffers of 1000.
    assert len(shapes) == 1614 - 4
    assert sum(int(np.prod(s)) for s in shapes.values()) == 672_015_547 - 1 - 3000
    assert shapes["first_stage_model.vocoder.conv_pre.weight"] == (1536, 256, 7)


def test_convert_infers_architecture_and_keeps_values(tiny_sd):
    weights, report = convert_state_dict(tiny_sd, origin="tiny")
    assert (weights.vae, weights.unet, weights.vocoder) == tuple(f() for f in WIDTHS["tiny"])
    assert weights.scale_factor == pytest.approx(0.55)
    assert "cond_vae" not in weights.params and "identical" in report.cond_vae
    assert report.ignored == {"schedule buffers": 1}
    # Spot-check layouts: torch conv [O, I, kh, kw] -> flax [kh, kw, I, O]; linear transposed.
    w = tiny_sd[VAE + "encoder.conv_in.weight"]
    np.testing.assert_array_equal(weights.params["vae"]["encoder"]["conv_in"]["kernel"], w.transpose(2, 3, 1, 0))
    w = tiny_sd[UNET + "time_embed.0.weight"]
    _find_kernel(weights, w.T)


def _find_kernel(weights, want):
    for path, x in _leaves(weights.params["unet"]):
        if x.shape == want.shape and np.array_equal(x, want):
            return x
    raise AssertionError("time_embed.0 kernel not found transposed in the UNet params")


def test_cond_vae_kept_only_when_it_differs(tiny_sd):
    sd = dict(tiny_sd)
    key = COND_VAE + "encoder.conv_in.weight"
    sd[key] = sd[key] + 1.0
    weights, report = convert_state_dict(sd, origin="tiny")
    assert "cond_vae" in weights.params and "differs" in report.cond_vae
    np.testing.assert_array_equal(weights.params["cond_vae"]["encoder"]["conv_in"]["kernel"],
                                  sd[key].transpose(2, 3, 1, 0))
    assert set(weights.params["cond_vae"]) == {"encoder", "quant_conv"}


@pytest.mark.parametrize("mutate,message", [
    (lambda sd: sd.pop(UNET + "out.2.weight"), "missing key.*out.2.weight"),
    (lambda sd: sd.__setitem__(UNET + "bogus.weight", np.zeros(3, np.float32)), "(unexpected.*bogus.weight|bogus.weight.*unexpected)"),
    (lambda sd: sd.__setitem__(VAE + "decoder.conv_out.bias", np.zeros(3, np.float32)), "shape mismatch.*decoder.conv_out.bias"),
    (lambda sd: sd.pop("scale_factor"), "scale_factor"),
    (lambda sd: sd.__setitem__("alphas_cumprod", np.linspace(1, 0, 1000, dtype=np.float32)), "cosine schedule"),
])
def test_bad_state_dicts_name_the_problem(tiny_sd, mutate, message):
    sd = dict(tiny_sd)
    mutate(sd)
    with pytest.raises(CheckpointError, match=message):
        convert_state_dict(sd, origin="x.bin")


def test_other_model_is_rejected():
    with pytest.raises(CheckpointError, match="not an AudioSR checkpoint"):
        convert_state_dict({"model.layer1.weight": np.zeros((2, 2))}, origin="resnet.pth")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_file_formats_convert_identically(tmp_path, suffix, tiny_sd):
    path = write_synthetic_checkpoint(tmp_path / f"m{suffix}", "tiny")
    weights, _ = convert_file(path)
    ref, _ = convert_state_dict(tiny_sd)
    for (pa, a), (pb, b) in zip(_leaves(weights.params), _leaves(ref.params)):
        assert pa == pb
        np.testing.assert_array_equal(a, b)


def test_bf16_torch_checkpoint_is_read_as_float32(tmp_path, tiny_sd):
    path = tmp_path / "bf16.bin"
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16 if v.ndim else torch.float32)
                                for k, v in tiny_sd.items() if k != "alphas_cumprod"}}, path)
    weights, _ = convert_file(path)
    assert weights.params["vae"]["encoder"]["conv_in"]["kernel"].dtype == np.float32


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"this is not a checkpoint" * 10), "not a PyTorch zip checkpoint"),
])
def test_unreadable_files(tmp_path, make, message):
    path = tmp_path / "model.bin"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        convert_file(path)


def test_truncated_files(tmp_path, tiny_torch_checkpoint):
    for name, src in (("cut.pth", write_synthetic_checkpoint(tmp_path / "full.pth", "tiny")), ("cut.safetensors", tiny_torch_checkpoint)):
        data = open(src, "rb").read()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            convert_file(cut)


def test_save_load_round_trip_and_no_overwrite(tmp_path, tiny_sd):
    weights, _ = convert_state_dict(tiny_sd)
    out = tmp_path / "ckpt"
    save_weights(weights, out)
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["format"] == "audiosr-jax/1" and arch["vae"]["ch_mult"] == [1, 1, 1, 1]
    loaded = load_weights(out)
    assert loaded.unet == weights.unet and loaded.scale_factor == pytest.approx(weights.scale_factor)
    for (pa, a), (pb, b) in zip(sorted(_leaves(loaded.params), key=lambda x: x[0]),
                                sorted(_leaves(weights.params), key=lambda x: x[0])):
        assert pa == pb
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="already exists"):
        save_weights(weights, out)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left behind


def test_non_finite_weights_are_never_saved(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd[UNET + "out.2.bias"] = np.full_like(sd[UNET + "out.2.bias"], np.nan)
    weights, _ = convert_state_dict(sd)
    with pytest.raises(CheckpointError, match="non-finite"):
        save_weights(weights, tmp_path / "nan")
    assert not (tmp_path / "nan").exists() and os.listdir(tmp_path) == []


def test_load_errors(tmp_path, tiny_torch_checkpoint):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="convert it first"):
        load_weights(tiny_torch_checkpoint)


def test_command_line(tmp_path, tiny_torch_checkpoint):
    out = tmp_path / "ckpt"
    run = subprocess.run([sys.executable, "-m", "audiosr_jax.convert", tiny_torch_checkpoint, str(out)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "scale_factor=0.55" in run.stdout and (out / "architecture.json").exists()
    bad = subprocess.run([sys.executable, "-m", "audiosr_jax.convert", str(tmp_path / "missing.bin"), str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "missing.bin: no such file" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "o").exists()


def test_overwrite_never_deletes_a_folder_that_is_not_a_checkpoint(tmp_path, tiny_torch_checkpoint):
    """--overwrite on a folder holding the source and other files: one-line refusal, every file kept."""
    folder = tmp_path / "models"
    folder.mkdir()
    src = folder / "tiny.safetensors"
    src.write_bytes(open(tiny_torch_checkpoint, "rb").read())
    (folder / "notes.txt").write_text("my notes")
    before = tree_snapshot(folder)
    run = subprocess.run([sys.executable, "-m", "audiosr_jax.convert", str(src), str(folder), "--overwrite"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "not an audiosr-jax checkpoint" in run.stderr
    assert tree_snapshot(folder) == before and sorted(os.listdir(tmp_path)) == ["models"]
    # a folder elsewhere that holds other files: refused the same way
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.wav").write_bytes(b"RIFF")
    with pytest.raises(CheckpointError, match="not an audiosr-jax checkpoint"):
        convert_file(src, other, overwrite=True)
    assert set(tree_snapshot(other)) == {"keep.wav"} and (other / "keep.wav").read_bytes() == b"RIFF"


def test_existing_file_as_output_is_one_line_error(tmp_path, tiny_torch_checkpoint):
    target = tmp_path / "out.bin"
    target.write_bytes(b"precious")
    for flags in ([], ["--overwrite"]):
        run = subprocess.run([sys.executable, "-m", "audiosr_jax.convert", tiny_torch_checkpoint, str(target), *flags],
                             capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().count("\n") == 0 and "not a directory" in run.stderr
        assert target.read_bytes() == b"precious"
    with pytest.raises(CheckpointError, match="not a directory"):  # the input as its own output
        convert_file(tiny_torch_checkpoint, tiny_torch_checkpoint, overwrite=True)


def test_overwrite_replaces_only_our_checkpoint_and_leaves_nothing_behind(tmp_path, tiny_sd):
    weights, _ = convert_state_dict(tiny_sd)
    out = tmp_path / "ckpt"
    save_weights(weights, out)
    weights.scale_factor = 0.25
    save_weights(weights, out, overwrite=True)
    assert load_weights(out).scale_factor == 0.25 and sorted(os.listdir(tmp_path)) == ["ckpt"]
    (out / "extra.txt").write_text("added by the user")  # no longer only ours: never replaced
    with pytest.raises(CheckpointError, match="not an audiosr-jax checkpoint"):
        save_weights(weights, out, overwrite=True)
    assert (out / "extra.txt").read_text() == "added by the user"


def test_failed_replacement_keeps_the_previous_checkpoint(tmp_path, tiny_sd, monkeypatch):
    import orbax.checkpoint as ocp

    weights, _ = convert_state_dict(tiny_sd)
    out = tmp_path / "ckpt"
    save_weights(weights, out)
    before = tree_snapshot(out)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", boom)
    with pytest.raises(OSError):
        save_weights(weights, out, overwrite=True)
    assert tree_snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["ckpt"]
