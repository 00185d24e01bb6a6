"""sample.py end to end on a tiny synthetic checkpoint, and every bad input it must refuse cleanly."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from audiosr_jax.cli import sample as sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tone(sr=16000, seconds=1.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def _run(argv, capsys):
    code = sample.main(argv)
    err = capsys.readouterr().err
    return code, err


def test_good_file_writes_48k_output_of_same_duration(tmp_path, tiny_checkpoint_dir, capsys):
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, _tone(16000, 1.3, channels=2), 16000)
    code, err = _run([str(src), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", "2"], capsys)
    assert code == 0, err
    data, sr = sf.read(out)
    assert sr == 48000 and data.shape == (int(1.3 * 48000), 2)
    assert np.all(np.isfinite(data)) and np.max(np.abs(data)) <= 1.0
    assert sorted(os.listdir(tmp_path)) == ["in.wav", "out.wav"]
    # Refuses to overwrite without --overwrite.
    code, err = _run([str(src), "-o", str(out), "--checkpoint", tiny_checkpoint_dir], capsys)
    assert code == 2 and "already exists" in err


def _bad_inputs(tmp_path):
    cases = {}
    p = tmp_path / "notaudio.wav"
    p.write_text("hello, I am a text file\n" * 20)
    cases["notaudio.wav"] = (p, "not a readable audio file")
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    cases["empty.wav"] = (p, "empty")
    p = tmp_path / "zerolength.wav"
    sf.write(p, np.zeros((0, 1), np.float32), 16000)
    cases["zerolength.wav"] = (p, "zero length")
    p = tmp_path / "silent.wav"
    sf.write(p, np.zeros((16000, 1), np.float32), 16000)
    cases["silent.wav"] = (p, "silent")
    p = tmp_path / "nan.wav"
    x = _tone()
    x[100] = np.nan
    sf.write(p, x, 16000, subtype="FLOAT")
    cases["nan.wav"] = (p, "nan samples")
    p = tmp_path / "inf.wav"
    x = _tone()
    x[100] = np.inf
    sf.write(p, x, 16000, subtype="FLOAT")
    cases["inf.wav"] = (p, "infinite samples")
    p = tmp_path / "absurd_rate.wav"
    sf.write(p, _tone(100, 2.0), 100)
    cases["absurd_rate.wav"] = (p, "sample rate 100 hz")
    p = tmp_path / "eight_channels.wav"
    sf.write(p, _tone(16000, 0.5, channels=8), 16000)
    cases["eight_channels.wav"] = (p, "channel")
    cases["missing.wav"] = (tmp_path / "missing.wav", "no such file")
    return cases


def test_bad_inputs_give_one_line_errors_and_no_output(tmp_path, tiny_checkpoint_dir, capsys):
    outdir = tmp_path / "out"
    outdir.mkdir()
    for name, (path, word) in _bad_inputs(tmp_path).items():
        out = outdir / (name + ".out.wav")
        code, err = _run([str(path), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", "1"], capsys)
        assert code == 2, (name, err)
        line = err.strip()
        assert "\n" not in line and name in line and word in line.lower(), (name, line)
        assert "Traceback" not in err
    assert os.listdir(outdir) == []  # nothing written, no temporary files left


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    src = tmp_path / "in.wav"
    sf.write(src, _tone(), 16000)
    code, err = _run([str(src), "-o", str(tmp_path / "o.wav"), "--checkpoint", str(tmp_path / "no_ckpt")], capsys)
    assert code == 2 and "no_ckpt" in err and "does not exist" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o.wav").exists()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    p = tmp_path / "garbage.flac"
    p.write_bytes(os.urandom(2048))
    run = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), str(p), "-o", str(tmp_path / "o.wav"),
                          "--checkpoint", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0


def test_sampler_that_does_not_fit_the_models_schedule_is_a_user_error():
    from types import SimpleNamespace

    from audiosr_jax import AudioSR
    from audiosr_jax.diffusion.config import DiffusionConfig
    from audiosr_jax.errors import UserError

    sr = AudioSR(SimpleNamespace(diffusion=DiffusionConfig("linear_zero_snr", (), 600, "eps"), sampling={}))
    sr.options(steps=50)  # fine: DDIM never visits t=599 at 50 steps
    with pytest.raises(UserError, match="trained with 600 timesteps"):
        sr.options(steps=800)
    with pytest.raises(UserError, match="sampler=ddim steps=300: an eps-prediction model cannot"):
        sr.options(steps=300)  # its grid reaches t=599, where ᾱ=0


def test_one_file_shows_live_sampler_steps_and_the_bar_does_not_change_the_output(tmp_path, tiny_checkpoint_dir,
                                                                                  capsys):
    src = tmp_path / "in.wav"
    sf.write(src, _tone(16000, 0.7, channels=2), 16000)
    outs = {}
    for flag in ([], ["--no-progress"]):
        out = tmp_path / f"out{len(flag)}.wav"
        code, err = _run([str(src), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", "3",
                          "--sampler", "heun", *flag], capsys)
        assert code == 0, err
        outs[bool(flag)] = sf.read(out)[0]
        if flag:
            assert "step" not in err
        else:  # Heun: 2·3 − 1 = 5 network calls, each ticked from inside the compiled sampler
            assert "5/5" in err and "step" in err, err
    np.testing.assert_array_equal(outs[False], outs[True])
