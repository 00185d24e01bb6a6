"""The offline corpus builder (data/build_corpus.py) without network: bandwidth measurement, manifest schema on a
local-folder source, packing, determinism, and skipping a source that cannot be had."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

_PATH = Path(__file__).resolve().parents[1] / "data" / "build_corpus.py"
_spec = importlib.util.spec_from_file_location("build_corpus", _PATH)
bc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("build_corpus", bc)  # dataclasses look the module up by name
_spec.loader.exec_module(bc)


def _bandlimited_noise(cutoff_hz, sr, seconds, seed=0):
    """White noise with every FFT bin above ``cutoff_hz`` zeroed (a brick-wall band limit)."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[np.fft.rfftfreq(n, 1 / sr) > cutoff_hz] = 0
    x = np.fft.irfft(spec, n)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("cutoff", [3000.0, 11000.0, 19500.0])
def test_bandwidth_of_bandlimited_noise(cutoff):
    x = _bandlimited_noise(cutoff, 48_000, 2.0)
    bw = bc.measure_bandwidth(x, 48_000)
    assert abs(bw - cutoff) < 250.0, (cutoff, bw)


def test_bandwidth_edge_cases():
    assert bc.measure_bandwidth(np.zeros(1000), 48_000) == 0.0
    full = np.random.default_rng(1).standard_normal(48_000)
    assert bc.measure_bandwidth(full, 48_000) > 23_500
    # stereo input is mixed to mono; the rate scales the answer
    st = np.stack([_bandlimited_noise(5000, 16_000, 1.0)] * 2, axis=1)
    assert abs(bc.measure_bandwidth(st, 16_000) - 5000) < 150


def test_bandwidth_rule_is_the_datasets_and_chunked_like_one_pass():
    # one implementation (the dataset builder stores it per example); frames are summed in chunks so a long
    # file needs no [frames x 4096] array, with the one-pass result
    from audiosr_jax.data.bandwidth import measure_bandwidth

    assert bc.measure_bandwidth is measure_bandwidth
    x = _bandlimited_noise(15_000, 48_000, 12.0, seed=5)  # 280 frames: more than one chunk
    n_fft, hop = 4096, 2048
    idx = np.arange(n_fft)[None, :] + hop * np.arange(1 + (x.size - n_fft) // hop)[:, None]
    power = (np.abs(np.fft.rfft(x.astype(np.float64)[idx] * np.hanning(n_fft), axis=1)) ** 2).mean(axis=0)
    power = np.convolve(power, np.ones(9) / 9, mode="same")
    want = np.nonzero(power >= power.max() * 1e-6)[0][-1] * 48_000 / n_fft
    assert measure_bandwidth(x, 48_000) == want


def test_resampling_does_not_invent_bandwidth():
    # 44.1 kHz noise up to 21 kHz must not appear to reach 24 kHz after resampling to 48 kHz
    x = _bandlimited_noise(21_000, 44_100, 1.0)
    y = bc.to_48k_mono(x, 44_100)
    assert y.dtype == np.float32 and abs(y.size - 48_000) <= 1
    assert bc.measure_bandwidth(y, 48_000) < 21_600


def _write_folder(folder: Path):
    folder.mkdir(parents=True)
    sf.write(folder / "a_stereo_44k.wav", np.stack([_bandlimited_noise(18_000, 44_100, 1.5, seed=s)
                                                    for s in (1, 2)], axis=1), 44_100)
    sf.write(folder / "b_mono_16k.flac", _bandlimited_noise(7_000, 16_000, 1.0, seed=3), 16_000)
    sf.write(folder / "c_dull_48k.wav", _bandlimited_noise(2_000, 48_000, 1.0, seed=4), 48_000)
    (folder / "notes.txt").write_text("not audio")  # unreadable files are passed over


def test_manifest_schema_and_determinism(tmp_path):
    folder = tmp_path / "fx"
    _write_folder(folder)
    src = bc.folder_source("effects", folder, licence="CC0-1.0")
    kw = dict(minutes=1.0, domains=("effects",), sources=[src], min_bandwidth_hz=5_000.0, log=lambda m: None)
    m = bc.build(tmp_path / "out", tmp_path / "cache", **kw)
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    clips = m["clips"]
    assert [Path(c["path"]).parent.name for c in clips] == ["effects", "effects"]  # the 2 kHz file is dropped
    assert m["summary"][src.name]["dropped_low_bandwidth"] == 1
    keys = {"path", "domain", "source", "package", "version", "licence", "origin", "orig_sr", "duration_s",
            "bandwidth_hz"}
    for c in clips:
        assert keys <= set(c)
        audio, sr = sf.read(tmp_path / "out" / c["path"])
        assert sr == 48_000 and audio.ndim == 1
        assert abs(c["duration_s"] - audio.size / sr) < 1e-3
        assert c["licence"] == "CC0-1.0" and c["domain"] == "effects"
        assert np.abs(audio).max() <= 10 ** (-1 / 20) + 1e-4
        assert abs(audio[0]) < 1e-3 and abs(audio[-1]) < 1e-3  # faded edges
    assert [c["orig_sr"] for c in clips] == [44_100, 16_000]
    assert abs(clips[0]["bandwidth_hz"] - 18_000) < 400
    assert abs(clips[1]["bandwidth_hz"] - 7_000) < 400
    assert m["summary"][src.name]["clips"] == 2
    # a second build gives byte-identical clips and manifest
    first = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    bc.build(tmp_path / "out", tmp_path / "cache", **kw)
    second = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert first == second


def test_budget_and_packing(tmp_path):
    def pieces(cache):
        for i in range(40):
            yield bc.Clip(f"p{i}", _bandlimited_noise(15_000, 48_000, 1.0, seed=i), 48_000, f"piece{i}")

    src = bc.Source("words", "speech", "local:test", "CC0-1.0", pieces, pack_s=4.0)
    m = bc.build(tmp_path / "out", tmp_path / "cache", minutes=10 / 60, domains=("speech",), sources=[src],
                 log=lambda m: None)
    durs = [c["duration_s"] for c in m["clips"]]
    assert 9.0 <= sum(durs) <= 10.0  # the budget is filled to within 1 s, never exceeded (last clip cut)
    assert durs[0] == pytest.approx(4 + 3 * bc.PACK_GAP_S, abs=1e-3)  # four 1 s pieces with gaps
    assert m["clips"][0]["origin"] == ["piece0", "piece1", "piece2", "piece3"]


def test_missing_source_is_skipped_with_one_line(tmp_path):
    folder = tmp_path / "fx"
    _write_folder(folder)

    def unavailable(cache):
        raise bc.SourceUnavailable("apt-get download failed: E: Unable to locate package nothere")
        yield  # pragma: no cover

    sources = [bc.Source("gone", "effects", "debian:nothere", "GPL-2.0", unavailable),
               bc.folder_source("effects", tmp_path / "no_such_folder"),
               bc.folder_source("effects", folder)]
    lines = []
    m = bc.build(tmp_path / "out", tmp_path / "cache", minutes=1.0, domains=("effects",), sources=sources,
                 min_bandwidth_hz=0.0, log=lines.append)
    skipped = [ln for ln in lines if ln.startswith("skipped")]
    assert len(skipped) == 2
    assert "debian:nothere" in skipped[0] and "\n" not in skipped[0]
    assert "no_such_folder" in skipped[1]
    assert [s["package"] for s in m["skipped"]] == ["debian:nothere", f"local:{tmp_path / 'no_such_folder'}"]
    assert len(m["clips"]) == 3 and all(c["source"] == "folder:fx" for c in m["clips"])


def test_cli_rejects_unknown_domain(capsys):
    with pytest.raises(SystemExit):
        bc.main(["--sources", "music,podcasts"])
    assert "podcasts" in capsys.readouterr().err
