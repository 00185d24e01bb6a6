"""sample.py never loses a user's files: outputs that are inputs, reruns, unwritable or full output
locations, bad flags and list files, truncated input, permissions, and a model that produces NaN."""

import errno
import json
import os

import jax
import numpy as np
import pytest
import soundfile as sf
from fs_snapshot import tree_snapshot
from jax.sharding import Mesh

from audiosr_jax import audio
from audiosr_jax.cli.sample import main as sample_main
from audiosr_jax.inference.batch import BatchConfig, run_batch
from audiosr_jax.inference.checkpoint import load_weights
from audiosr_jax.inference.inputs import assign_outputs, expand_inputs
from audiosr_jax.inference.pipeline import SamplingOptions


def _tone(sr=16000, seconds=1.0, seed=0):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return x.astype(np.float32)


def _run(argv, capsys):
    code = sample_main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "a.wav", _tone(), 16000)
    sf.write(d / "sub" / "b.flac", _tone(22050, 0.6, seed=1), 22050)
    return d


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_output_folder_that_is_the_input_folder_is_refused(folder, tiny_checkpoint_dir, capsys, flags):
    before = tree_snapshot(folder)
    code, _, err = _run([str(folder), "-o", str(folder), "--checkpoint", tiny_checkpoint_dir, "--steps", "1", *flags],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "input folder" in err, err
    assert tree_snapshot(folder) == before


def test_output_that_would_overwrite_an_input_is_refused(folder, tiny_checkpoint_dir, capsys):
    before = tree_snapshot(folder)
    # a.wav and sub/b.flac listed by name: their outputs go to OUT/a.wav, OUT/b.wav; OUT = in → in/a.wav
    code, _, err = _run([str(folder / "a.wav"), str(folder / "sub" / "b.flac"), "-o", str(folder), "--overwrite",
                         "--checkpoint", tiny_checkpoint_dir], capsys)
    assert code == 2 and err.count("\n") == 1 and "would overwrite the input" in err and "a.wav" in err, err
    assert tree_snapshot(folder) == before
    code, _, err = _run([str(folder / "a.wav"), "-o", str(folder / "a.wav"), "--overwrite",
                         "--checkpoint", tiny_checkpoint_dir], capsys)
    assert code == 2 and "would overwrite the input" in err and tree_snapshot(folder) == before


def test_output_folder_inside_the_inputs_is_not_read_back_and_the_report_is_kept(folder, tiny_checkpoint_dir,
                                                                                  capsys):
    out = folder / "out"
    argv = [str(folder), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", "1", "--no-progress"]
    code, printed, err = _run(argv, capsys)
    assert code == 0, err
    assert "2 written, 0 skipped" in printed
    first = {r["input"]: r for r in json.loads((out / "report.json").read_text())}
    assert sorted(os.path.relpath(p, folder) for p in first) == ["a.wav", "sub/b.flac"]
    code, printed, err = _run(argv, capsys)
    assert code == 0 and "0 written, 2 skipped, 0 failed" in printed, (printed, err)  # out/*.wav not inputs
    again = {r["input"]: r for r in json.loads((out / "report.json").read_text())}
    assert set(again) == set(first)
    for name, r in again.items():  # what the first run measured is still there
        assert r["status"] == "skipped"
        for key in ("duration_s", "cutoff_hz", "windows", "channels", "sample_rate"):
            assert r[key] == first[name][key] and r[key], key
    mode = os.stat(out / "a.wav").st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)  # the user's umask, not mkstemp's private 0600


def _umask():
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_unwritable_output_is_found_before_any_compute(folder, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    # the checkpoint does not exist: the output must be refused first (so before any load or compute)
    code, _, err = _run([str(folder), "-o", str(blocker / "out"), "--checkpoint", str(tmp_path / "nockpt")], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot write the outputs" in err and str(blocker) in err, err
    code, _, err = _run([str(folder / "a.wav"), "-o", str(blocker / "o.wav"), "--checkpoint", str(tmp_path / "n")],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "o.wav" in err and "nockpt" not in err, err
    code, _, err = _run([str(folder), "-o", str(tmp_path / "o"), "--report", str(blocker / "r.json"),
                         "--checkpoint", str(tmp_path / "nockpt")], capsys)
    assert code == 2 and "cannot write the report" in err, err


def test_full_disk_stops_the_run_with_one_line_and_every_reason(folder, tmp_path, tiny_checkpoint_dir, capsys,
                                                               monkeypatch):
    for i in range(3):
        sf.write(folder / f"c{i}.wav", _tone(seed=10 + i), 16000)
    real = audio.atomic_write
    calls = []

    def full(path, write):
        if str(path).endswith(".wav"):
            calls.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, write)

    monkeypatch.setattr(audio, "atomic_write", full)
    out = tmp_path / "o"
    code, printed, err = _run([str(folder), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", "1",
                               "--no-progress", "--devices", "1"], capsys)
    assert code == 1
    assert len(calls) == 1  # stopped at the first full write: no compute wasted on the other files
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        ln for ln in err.splitlines() if "stopped" in ln and "No space left on device" in ln and ln.startswith("error:")]
    assert sum(ln.startswith("failed:") for ln in err.splitlines()) == 5  # one reason per file
    rows = json.loads((out / "report.json").read_text())
    assert all(r["status"] == "failed" for r in rows) and sum("not processed" in r["reason"] for r in rows) == 4
    assert [n for n in os.listdir(out) if n != "report.json"] == []  # no partial file


@pytest.mark.parametrize("flag,value,word", [
    ("--seed", str(2**40), "--seed"), ("--seed", "-1", "--seed"), ("--devices", "-1", "--devices"),
    ("--devices", "99", "--devices 99"), ("--guidance", "nan", "--guidance"), ("--eta", "-3", "--eta"),
    ("--eta", "nan", "--eta"), ("--steps", "0", "--steps"), ("--max-channels", "0", "--max-channels"),
])
def test_bad_flags_are_one_line_naming_the_flag(folder, tiny_checkpoint_dir, tmp_path, capsys, flag, value, word):
    code, _, err = _run([str(folder / "a.wav"), "-o", str(tmp_path / "o.wav"), "--checkpoint", tiny_checkpoint_dir,
                         flag, value], capsys)
    assert code == 2 and err.count("\n") == 1 and word in err and "checkpoint" not in err.lower(), err
    assert "Traceback" not in err and not (tmp_path / "o.wav").exists()


def test_binary_file_as_list_is_one_line(folder, tmp_path, tiny_checkpoint_dir, capsys):
    code, _, err = _run(["@" + str(folder / "a.wav"), "-o", str(tmp_path / "o"), "--checkpoint", tiny_checkpoint_dir],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "not a text list" in err and "a.wav" in err, err


def test_existing_path_is_taken_literally_before_glob_or_list(tmp_path):
    for name in ("take[1].wav", "take1.wav", "@odd.wav"):
        sf.write(tmp_path / name, _tone(), 16000)
    jobs = expand_inputs([str(tmp_path / "take[1].wav"), str(tmp_path / "@odd.wav")])
    assert sorted(os.path.basename(j.input) for j in jobs) == ["@odd.wav", "take[1].wav"]
    jobs = expand_inputs([str(tmp_path / "take[0-9].wav")])  # no such file: a glob
    assert [os.path.basename(j.input) for j in jobs] == ["take1.wav"]


def test_truncated_wav_is_processed_and_reported(tmp_path, tiny_checkpoint_dir, capsys):
    p = tmp_path / "cut.wav"
    sf.write(p, _tone(16000, 1.0), 16000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    code, _, err = _run([str(p), "-o", str(tmp_path / "o.wav"), "--checkpoint", tiny_checkpoint_dir, "--steps", "1"],
                        capsys)
    assert code == 0 and "truncated" in err and "cut.wav" in err, err
    assert sf.info(tmp_path / "o.wav").frames == pytest.approx(48000 * 0.5, abs=48)
    out = tmp_path / "batch"
    code, _, err = _run([str(p), str(tmp_path / "o.wav"), "-o", str(out), "--checkpoint", tiny_checkpoint_dir,
                         "--steps", "1", "--no-progress"], capsys)
    rows = {os.path.basename(r["input"]): r for r in json.loads((out / "report.json").read_text())}
    assert "truncated" in rows["cut.wav"]["note"] and rows["o.wav"]["note"] == ""


def test_non_finite_model_output_is_caught_and_never_written(tmp_path, tiny_checkpoint_dir):
    """NaN inputs are refused earlier, so only a broken model reaches the output guard: NaN vocoder weights."""
    weights = load_weights(tiny_checkpoint_dir)
    voc = jax.tree.map(lambda x: np.full_like(np.asarray(x), np.nan), weights.params["vocoder"])
    weights.params = {**weights.params, "vocoder": voc}
    p = tmp_path / "x.wav"
    sf.write(p, _tone(), 16000)
    jobs = assign_outputs(expand_inputs([str(p)]), str(tmp_path / "o"))
    [r] = run_batch(weights, jobs, BatchConfig(options=SamplingOptions(steps=1)),
                    mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)), progress=False)
    assert r.status == "failed" and "non-finite" in r.reason and "x.wav" in r.reason
    assert not os.path.exists(tmp_path / "o") or os.listdir(tmp_path / "o") == []
