"""The evaluation command on small generated folders: --simulate, pairing, per-cutoff table, CSV / JSON,
PNGs, problems and exit codes. White noise at 48 kHz (no resampling through librosa, no network)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from audiosr_jax import evaluation as E
from audiosr_jax.cli.evaluate import main as evaluate_main
from audiosr_jax.inference.lowpass import lowpass_filter

SR = 48000


def _noise(n, seed, channels=1):
    x = 0.1 * np.random.default_rng(seed).standard_normal((n, channels))
    return x[:, 0] if channels == 1 else x


@pytest.fixture()
def refs(tmp_path):
    root = tmp_path / "refs"
    (root / "spk").mkdir(parents=True)
    sf.write(root / "a.wav", _noise(SR, 1), SR, subtype="FLOAT")
    sf.write(root / "spk" / "b.wav", _noise(SR, 2), SR, subtype="FLOAT")
    sf.write(root / "c.flac", _noise(36_000, 3, channels=2), SR)
    return root


def _run(args, capsys):
    rc = evaluate_main([*map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_measure_cutoff_matches_pipeline_detector():
    from audiosr_jax.audio import stft_magnitude
    from audiosr_jax.inference.lowpass import detect_cutoff_hz

    x = lowpass_filter(_noise(2 * SR, 4), 7000, SR).astype(np.float32)
    pipeline = detect_cutoff_hz(np.asarray(stft_magnitude(x[None]))[0, :, :1024])
    assert abs(E.measure_cutoff_hz(x) - pipeline) <= 24000 / 1024
    assert abs(pipeline - 7000) < 300


def test_simulate_then_evaluate(tmp_path, refs, capsys):
    sim, out, png = tmp_path / "sim", tmp_path / "out", tmp_path / "png"
    rc, stdout, _ = _run(["--simulate", "4k,8000", "--references", refs, "--inputs", sim], capsys)
    assert rc == 0, stdout
    man = json.loads((sim / "manifest.json").read_text())
    assert len(man["items"]) == 6 and man["filter"] == "ellip" and man["order"] == 8
    for item in man["items"]:
        x, sr = sf.read(sim / item["input"], always_2d=True)
        ref, _ = sf.read(refs / item["reference"], always_2d=True)
        assert sr == SR and x.shape == ref.shape
        assert item["input"].startswith(f"lp{int(item['cutoff_hz'])}/")
        measured = E.measure_cutoff_hz(x.T)
        assert abs(measured - item["cutoff_hz"]) < 300, item
        assert measured == item["detected_cutoff_hz"]
    # a second simulation into the same folder needs --overwrite
    rc, _, err = _run(["--simulate", "4000", "--references", refs, "--inputs", sim], capsys)
    assert rc == 2 and "--overwrite" in err

    # "model": perfect at 4 kHz (the reference itself), identity at 8 kHz (the low-passed input)
    for item in man["items"]:
        dst = out / item["input"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if item["cutoff_hz"] == 4000:
            x, _ = sf.read(refs / item["reference"])
            sf.write(dst, x, SR, subtype="FLOAT")
        else:
            shutil.copy(sim / item["input"], dst)
    rc, stdout, err = _run(["--outputs", out, "--references", refs, "--inputs", sim, "--csv", tmp_path / "r.csv",
                            "--json", tmp_path / "r.json", "--png", png], capsys)
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 6 and all(r["status"] == "ok" and r["cutoff_source"] == "manifest" for r in rows)
    report = json.loads((tmp_path / "r.json").read_text())
    table = {t["cutoff_khz"]: t for t in report["table"]}
    assert set(table) == {"4", "8", "all"} and table["4"]["n"] == 3 and table["all"]["n"] == 6
    assert table["4"]["lsd_mean"] < 1e-6 and table["4"]["si_sdr_mean"] == 100.0
    assert table["8"]["lsd_hf_mean"] > 3.0 and table["8"]["lsd_lf_mean"] < 0.3
    for r in rows:  # an identity "model" at 8 kHz scores exactly its input
        if r["cutoff_hz"] == "8000.0":
            assert float(r["lsd"]) == pytest.approx(float(r["input_lsd"]))
    assert "cutoff (kHz)" in stdout and "LSD-HF" in stdout
    assert sorted(p.relative_to(png).as_posix() for p in png.rglob("*.png")) == sorted(
        os.path.splitext(i["input"])[0] + ".png" for i in man["items"])
    assert (png / "lp4000" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairing_by_name_detected_cutoffs_and_problems(tmp_path, refs, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (out / "spk").mkdir(parents=True)
    a, _ = sf.read(refs / "a.wav")
    b, _ = sf.read(refs / "spk" / "b.wav")
    sf.write(inputs / "a.wav", lowpass_filter(a, 6000, SR), SR, subtype="FLOAT")
    sf.write(inputs / "b.wav", lowpass_filter(b, 12000, SR), SR, subtype="FLOAT")
    # output names as the official CLI writes them; b in a subfolder, matched by its unique stem for the input
    sf.write(out / "a_AudioSR_Processed_48K.wav", a, SR, subtype="FLOAT")
    sf.write(out / "spk" / "b.wav", 0.5 * b[:-2000], SR, subtype="FLOAT")  # quieter and 42 ms shorter
    (out / "junk.wav").write_text("not audio")  # unreadable, and without a reference
    rc, stdout, err = _run(["--outputs", out, "--references", refs, "--inputs", inputs, "--json",
                            tmp_path / "r.json"], capsys)
    assert rc == 1
    rep = json.loads((tmp_path / "r.json").read_text())
    rows = {os.path.basename(r["output"]): r for r in rep["files"]}
    assert set(rows) == {"a_AudioSR_Processed_48K.wav", "b.wav"}
    ra, rb = rows["a_AudioSR_Processed_48K.wav"], rows["b.wav"]
    assert ra["cutoff_source"] == rb["cutoff_source"] == "detected"
    assert ra["cutoff_bucket_khz"] == 6.0 and rb["cutoff_bucket_khz"] == 12.0
    assert ra["lsd"] < 1e-6 and ra["input_lsd_hf"] > 3.0
    assert rb["length_diff_s"] == pytest.approx(-2000 / SR)
    assert rb["lsd"] == pytest.approx(0.6, abs=0.01) and rb["lsd_energy_scaled"] < 0.01
    assert rb["si_sdr"] == 100.0
    problems = rep["problems"]
    assert any("junk.wav" in p and "no reference" in p for p in problems)
    assert any("c.flac" in p and "reference without an output" in p for p in problems)
    assert all("\n" not in p for p in problems)
    assert "problems (2)" in err
    assert [ln.split()[:2] for ln in stdout.splitlines()[2:5]] == [["6", "1"], ["12", "1"], ["all", "2"]]


def test_unreadable_output_and_lp_folder_names(tmp_path, refs, capsys):
    out = tmp_path / "out"
    (out / "lp3000").mkdir(parents=True)
    (out / "lp3000" / "spk").mkdir()
    a, _ = sf.read(refs / "a.wav")
    sf.write(out / "lp3000" / "a.wav", lowpass_filter(a, 3000, SR), SR, subtype="FLOAT")
    (out / "lp3000" / "spk" / "b.wav").write_bytes(b"RIFF\x00\x00")  # corrupt
    sf.write(out / "lp3000" / "c.wav", np.zeros((36_000, 2)), SR)  # silent output: scored, badly
    rc, stdout, err = _run(["--outputs", out, "--references", refs, "--csv", tmp_path / "r.csv"], capsys)
    assert rc == 1
    rows = {os.path.basename(r["output"]): r for r in csv.DictReader(open(tmp_path / "r.csv"))}
    assert rows["a.wav"]["cutoff_source"] == "name" and float(rows["a.wav"]["cutoff_hz"]) == 3000
    assert float(rows["a.wav"]["lsd_hf"]) > 3.0
    assert rows["b.wav"]["status"] == "failed" and "not a readable audio file" in rows["b.wav"]["error"]
    assert rows["c.wav"]["status"] == "ok" and float(rows["c.wav"]["si_sdr"]) == -100.0
    assert "b.wav: not a readable audio file" in err
    assert stdout.splitlines()[2].split()[:2] == ["3", "2"]  # bucket 3 kHz holds the two scored files


def test_summarize_and_format_table():
    rows = [
        {"status": "ok", "cutoff_bucket_khz": 4.0, "lsd": 1.0, "lsd_hf": 2.0, "lsd_lf": 0.1, "si_sdr": 10.0},
        {"status": "ok", "cutoff_bucket_khz": 4.0, "lsd": 3.0, "lsd_hf": 4.0, "lsd_lf": 0.3, "si_sdr": 20.0},
        {"status": "ok", "cutoff_bucket_khz": None, "lsd": 2.0, "lsd_hf": None, "lsd_lf": None, "si_sdr": 5.0},
        {"status": "failed", "cutoff_bucket_khz": 8.0},
    ]
    table = E.summarize(rows)
    assert [t["cutoff_khz"] for t in table] == ["4", "unknown", "all"]
    four = table[0]
    assert four["n"] == 2 and four["lsd_mean"] == 2.0 and four["lsd_std"] == 1.0 and four["si_sdr_mean"] == 15.0
    assert table[1]["lsd_hf_mean"] is None and table[2]["lsd_hf_n"] == 2 and table[2]["n"] == 3
    text = E.format_table(table)
    assert "2.000 ± 1.000" in text and "15.00 ± 5.00" in text and "unknown" in text
    assert E.bucket_khz(3914.06) == 4.0 and E.bucket_khz(7804.7, 2.0) == 8.0 and E.bucket_khz(None) is None


def test_usage_errors(tmp_path, refs, capsys):
    rc, _, err = _run(["--outputs", tmp_path / "nope", "--references", refs], capsys)
    assert rc == 2 and "does not exist" in err
    rc, _, err = _run(["--references", refs], capsys)
    assert rc == 2 and "--outputs" in err
    rc, _, err = _run(["--simulate", "30000", "--references", refs, "--inputs", tmp_path / "s"], capsys)
    assert rc == 2 and "outside" in err
    rc, _, err = _run(["--simulate", "4000", "--references", refs, "--inputs", refs / "sim"], capsys)
    assert rc == 2 and "inside the references" in err
    assert E.parse_cutoffs("8k, 4000,4kHz") == [4000.0, 8000.0]


def _band(x, lo_hz, hi_hz):
    """x with every FFT bin outside [lo_hz, hi_hz) zeroed (a brick-wall band, no phase change)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return np.fft.irfft(np.where((f >= lo_hz) & (f < hi_hz), spec, 0), len(x))


def test_a_narrow_reference_is_scored_within_its_own_band(tmp_path):
    """A reference with nothing above 12 kHz, an output equal to it below 12 kHz plus noise above 14 kHz:
    within the reference's band LSD-HF (4–12 kHz) sees a perfect output; every-bin scoring sees the noise."""
    ref = _band(_noise(2 * SR, 1), 0, 12000)
    out = ref + _band(_noise(2 * SR, 2), 14000, SR)
    for name, x in (("ref.wav", ref), ("out.wav", out)):
        sf.write(tmp_path / name, x, SR, subtype="FLOAT")
    inside = E.evaluate_file(str(tmp_path / "out.wav"), str(tmp_path / "ref.wav"), None, 4000.0, "given")
    every = E.evaluate_file(str(tmp_path / "out.wav"), str(tmp_path / "ref.wav"), None, 4000.0, "given",
                            within_reference_band=False)
    assert 11000 < inside["reference_bandwidth_hz"] < 13000
    assert every["reference_bandwidth_hz"] == inside["reference_bandwidth_hz"]
    assert inside["lsd_hf"] < 0.05 < 0.5 < every["lsd_hf"]
    assert inside["lsd_lf"] == pytest.approx(every["lsd_lf"], abs=1e-12)
