"""The Python API (`AudioSR`): arrays equal sample.py's files for the same audio and seed, batches equal
single calls, released weights by name from a local hub cache (offline), and the official CLI's flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from audiosr_jax import AudioSR
from audiosr_jax.errors import AudioError
from audiosr_jax.cli.sample import main as sample_main, parse_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 1


def _signal(sr, seconds, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 330 * t)[None] + 0.05 * rng.standard_normal((channels, t.size))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def sr(tiny_checkpoint_dir):
    return AudioSR.from_pretrained(tiny_checkpoint_dir, devices=1)


@pytest.mark.parametrize("rate,seconds,channels", [(16000, 1.3, 1), (22050, 11.0, 2)])
def test_array_equals_sample_py_for_the_same_file_and_seed(sr, tiny_checkpoint_dir, tmp_path, rate, seconds,
                                                           channels, capsys):
    """Mono and a long stereo signal (two overlapping windows): the same windows and noise keys."""
    x = _signal(rate, seconds, channels)
    path = tmp_path / "x.wav"
    sf.write(path, x.T, rate, subtype="FLOAT")
    out = tmp_path / "y.wav"
    code = sample_main([str(path), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", str(STEPS),
                        "--seed", "7", "--devices", "1"])
    assert code == 0, capsys.readouterr().err
    want, file_rate = sf.read(out, always_2d=True, dtype="float32")
    got = sr(x[0] if channels == 1 else x, rate, steps=STEPS, seed=7)
    assert file_rate == 48000 and got.dtype == np.float32
    assert got.shape == ((want.shape[0],) if channels == 1 else (channels, want.shape[0]))
    np.testing.assert_allclose(np.atleast_2d(got), want.T, atol=2.0 ** -22)  # the file is 24-bit PCM
    other = sr(x[0] if channels == 1 else x, rate, steps=STEPS, seed=8)
    assert np.max(np.abs(other - got)) > 1e-3  # the seed is used


def test_batch_equals_single_calls_and_takes_pcm_integers(sr):
    a, b = _signal(16000, 0.8), _signal(44100, 0.5, seed=1)
    ys = sr.batch([a[0], b], [16000, 44100], steps=STEPS)
    np.testing.assert_allclose(ys[0], sr(a[0], 16000, steps=STEPS), atol=1e-5)
    np.testing.assert_allclose(ys[1], sr(b, 44100, steps=STEPS), atol=1e-5)
    assert ys[0].ndim == 1 and ys[1].shape[0] == 1
    pcm = np.round(a[0] * 32767).astype(np.int16)  # integers are PCM: full scale ±1
    np.testing.assert_allclose(sr(pcm, 16000, steps=STEPS), ys[0], atol=2e-3)


def test_bad_arrays_are_one_line_errors(sr):
    for x, word in [(np.zeros(16000, np.float32), "silent"), (np.full(100, np.nan, np.float32), "nan"),
                    (_signal(16000, 1.0, channels=2).T, "[channels, samples]"), (np.zeros((0,)), "zero length")]:
        with pytest.raises(AudioError) as e:
            sr(x, 16000)
        assert "\n" not in str(e.value) and word in str(e.value).lower(), str(e.value)


def test_official_cli_flags_are_aliases():
    ours = parse_args(["a.wav", "@list.txt", "-o", "out", "--model", "speech", "--steps", "20", "--guidance", "2.5",
                       "--seed", "7"])
    theirs = parse_args(["-i", "a.wav", "-il", "list.txt", "-s", "out", "--model_name", "speech", "--ddim_steps",
                         "20", "-gs", "2.5", "--seed", "7"])
    assert vars(ours) | {"input_audio_file": [], "input_file_list": []} == \
        vars(theirs) | {"input_audio_file": [], "input_file_list": []}
    assert parse_args(["x.wav", "-o", "y.wav"]).model is None  # the default model is chosen later ("basic")


def _hub_cache(root, tiny_torch_checkpoint, repo="haoheliu/audiosr_basic", revision="0123456789abcdef" * 2 + "01234567"):
    """A huggingface_hub cache holding `repo`'s pytorch_model.bin (a tiny checkpoint in the released layout)."""
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / revision
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(revision)
    import torch
    from safetensors.numpy import load_file

    sd = load_file(tiny_torch_checkpoint)
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, snap / "pytorch_model.bin")
    return revision


def test_released_model_by_name_offline_converted_once(tmp_path, tiny_torch_checkpoint):
    """sample.py --model_name basic (official flags) with HF_HUB_OFFLINE=1 and a local hub cache: fetched,
    converted into the cache once, reused by the next run (not converted again)."""
    revision = _hub_cache(tmp_path / "hub", tiny_torch_checkpoint)
    x = _signal(16000, 0.5)
    sf.write(tmp_path / "in.wav", x.T, 16000)
    (tmp_path / "list.txt").write_text("in.wav\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "AUDIOSR_JAX_HOME": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, os.path.join(REPO, "sample.py"), "-il", str(tmp_path / "list.txt"), "-s",
            str(tmp_path / "out"), "--model_name", "basic", "--ddim_steps", "1", "-gs", "2.5", "--seed", "3",
            "--no-progress", "--devices", "1"]
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    converted = tmp_path / "cache" / "converted" / f"basic-{revision[:16]}"
    arch = converted / "architecture.json"
    assert arch.is_file() and json.loads(arch.read_text())["format"] == "audiosr-jax/1"
    stamp = arch.stat().st_mtime_ns
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["status"] for r in rows] == ["ok"]
    run = subprocess.run(argv + ["--overwrite"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert arch.stat().st_mtime_ns == stamp  # reused, not converted again
    # not in the cache and offline: one line naming the repository
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    argv[argv.index("basic")] = "speech"
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "haoheliu/audiosr_speech" in run.stderr, run.stderr


def test_pytorch_file_is_converted_once_into_the_cache(tmp_path, tiny_torch_checkpoint, monkeypatch):
    from audiosr_jax.inference.pretrained import resolve_checkpoint

    monkeypatch.setenv("AUDIOSR_JAX_HOME", str(tmp_path / "cache"))
    first = resolve_checkpoint(tiny_torch_checkpoint)
    stamp = os.stat(os.path.join(first, "architecture.json")).st_mtime_ns
    assert resolve_checkpoint(tiny_torch_checkpoint) == first
    assert os.stat(os.path.join(first, "architecture.json")).st_mtime_ns == stamp
    assert os.path.dirname(first) == str(tmp_path / "cache" / "converted")


def test_a_checkpoints_own_sampling_is_the_default_and_flags_override_it(tiny_checkpoint_dir, tmp_path):
    """A checkpoint whose architecture.json says how to sample it (a distilled student: few steps, no guidance)
    is sampled that way unless the call says otherwise; without one, the release's settings apply."""
    import shutil

    from audiosr_jax.errors import CheckpointError
    from audiosr_jax.inference.checkpoint import load_weights
    from audiosr_jax.inference.pipeline import SamplingOptions

    student = tmp_path / "student"
    shutil.copytree(tiny_checkpoint_dir, student)
    arch = json.loads((student / "architecture.json").read_text())
    arch["sampling"] = {"steps": 3, "sampler": "heun", "guidance": 1.0, "eta": 0.0}
    (student / "architecture.json").write_text(json.dumps(arch))
    sr_student = AudioSR.from_pretrained(str(student), devices=1)
    assert sr_student.options() == SamplingOptions(3, 1.0, 0.0, "heun", "float32")
    assert sr_student.options(steps=5, guidance=2.0) == SamplingOptions(5, 2.0, 0.0, "heun", "float32")
    assert AudioSR.from_pretrained(tiny_checkpoint_dir, devices=1).options() == SamplingOptions(50, 3.5, 1.0, "ddim")
    assert load_weights(str(student), lazy=True).architecture()["sampling"] == arch["sampling"]  # written back
    assert "sampling" not in load_weights(tiny_checkpoint_dir, lazy=True).architecture()
    assert parse_args(["x.wav", "-o", "y.wav"]).steps is None  # the CLI leaves the choice to the checkpoint
    arch["sampling"] = {"steps": 3, "solver": "heun"}
    (student / "architecture.json").write_text(json.dumps(arch))
    with pytest.raises(CheckpointError, match="unknown sampling settings"):
        load_weights(str(student), lazy=True)
