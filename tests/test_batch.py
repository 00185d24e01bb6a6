"""Batch inference: mixed folders with bad files, equality with the one-file path, 8 devices = 1 device."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from jax.sharding import Mesh

from audiosr_jax import audio
from audiosr_jax.inference import lowpass, postprocess, windows
from audiosr_jax.inference.batch import BatchConfig, run_batch
from audiosr_jax.inference.checkpoint import load_weights
from audiosr_jax.inference.inputs import assign_outputs, expand_inputs
from audiosr_jax.inference.pipeline import (SamplingOptions, draw_noise, item_keys, latent_shape, num_sampler_steps,
                                  super_resolve_waveform, super_resolve_windows)
from audiosr_jax.cli.sample import main as sample_main

OPTIONS = SamplingOptions(steps=2)
SEAM_RATIO_MAX = 1.2  # spectral flux at seams / elsewhere: 0.98 measured here; a hard splice gives > 3


def _signal(sr, seconds, channels=1, seed=0, cutoff=None):
    rng = np.random.default_rng(seed)
    n = max(1, int(sr * seconds))
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 330 * t)[:, None] + 0.05 * rng.standard_normal((n, channels))
    if cutoff:
        spec = np.fft.rfft(x, axis=0)
        spec[np.fft.rfftfreq(n, 1 / sr) > cutoff] = 0
        x = np.fft.irfft(spec, n, axis=0)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def weights(tiny_checkpoint_dir):
    return load_weights(tiny_checkpoint_dir)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    good = {
        "mono_16k.wav": (_signal(16000, 1.0, cutoff=4000), 16000),
        "stereo_44k.flac": (_signal(44100, 2.0, channels=2, seed=1, cutoff=6000), 44100),
        "sub/short_0.05s.wav": (_signal(48000, 0.05, seed=2), 48000),
        "rate_96k.wav": (_signal(96000, 0.5, seed=3, cutoff=8000), 96000),
        "rate_8k.ogg": (_signal(8000, 1.0, seed=4), 8000),
        "fullband_48k.wav": (_signal(48000, 1.0, seed=5), 48000),
    }
    for name, (x, sr) in good.items():
        os.makedirs(d / os.path.dirname(name), exist_ok=True)
        sf.write(d / name, x, sr)
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(40))
    (d / "empty.flac").write_bytes(b"")
    (d / "notes.wav").write_text("not audio at all\n" * 10)
    x = _signal(16000, 1.0)
    x[10] = np.nan
    sf.write(d / "nan.wav", x, 16000, subtype="FLOAT")
    sf.write(d / "silent.wav", np.zeros((16000, 1), np.float32), 16000)
    sf.write(d / "eight_channels.wav", _signal(16000, 0.5, channels=8), 16000)
    bad = ["corrupt.wav", "empty.flac", "notes.wav", "nan.wav", "silent.wav", "eight_channels.wav"]
    return d, sorted(good), bad


def test_folder_with_bad_files(tmp_path, tiny_checkpoint_dir, mixed_folder, capsys):
    src, good, bad = mixed_folder
    out = tmp_path / "out"
    code = sample_main([str(src), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", "2",
                        "--batch-size", "2", "--devices", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # some failed
    report = {os.path.relpath(r["input"], src): r for r in json.load(open(out / "report.json"))}
    for name in good:
        r = report[name]
        assert r["status"] == "ok", r
        y, sr = sf.read(os.path.join(out, os.path.splitext(name)[0] + ".wav"), always_2d=True)
        x_info = sf.info(os.path.join(src, name))
        assert sr == 48000 and y.shape[1] == x_info.channels
        assert abs(y.shape[0] - x_info.duration * 48000) <= 2 and np.all(np.isfinite(y))
    for name in bad:
        r = report[name]
        assert r["status"] == "failed" and name in r["reason"] and "\n" not in r["reason"], r
        assert name in captured.err
    assert not os.path.exists(out / "corrupt.wav")
    leftovers = [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".")]
    assert leftovers == []
    # A rerun skips what is done and retries nothing new.
    code = sample_main([str(src), "-o", str(out), "--checkpoint", tiny_checkpoint_dir, "--steps", "2",
                        "--devices", "1", "--no-progress", "--report", str(tmp_path / "r.csv")])
    assert code == 1
    rows = open(tmp_path / "r.csv").read()
    assert rows.count(",skipped,") == len(good) and rows.count(",failed,") == len(bad)


def test_batched_equals_one_file_path(tmp_path, weights):
    paths = []
    for i, (sr, sec, ch) in enumerate([(16000, 1.0, 1), (48000, 2.5, 2), (22050, 0.7, 1)]):
        p = tmp_path / f"f{i}.wav"
        sf.write(p, _signal(sr, sec, channels=ch, seed=i, cutoff=3000 + 1000 * i), sr)
        paths.append(str(p))
    jobs = assign_outputs(expand_inputs(paths), str(tmp_path / "out"))
    cfg = BatchConfig(options=OPTIONS, seed=7, batch_per_device=3)
    results = run_batch(weights, jobs, cfg, mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)), progress=False)
    assert [r.status for r in results] == ["ok"] * 3
    for job in jobs:
        wave, info = audio.prepare_waveform(job.input)
        want, _ = super_resolve_waveform(weights, wave, info, OPTIONS, seed=7,
                                         filter_type=lowpass.filter_type("official", 7))
        got, _ = sf.read(job.output, always_2d=True, dtype="float32")
        np.testing.assert_allclose(got.T, want, atol=1e-5)  # 24-bit output, fp32 batch-size effects


def test_eight_devices_give_the_same_outputs_as_one(tmp_path, weights):
    assert len(jax.devices()) == 8
    paths = []
    for i in range(3):
        p = tmp_path / f"g{i}.wav"
        sf.write(p, _signal(16000, 1.0 + i, channels=1 + i % 2, seed=10 + i, cutoff=4000), 16000)
        paths.append(str(p))
    outs = {}
    for n_dev in (1, 8):
        jobs = assign_outputs(expand_inputs(paths), str(tmp_path / f"out{n_dev}"))
        cfg = BatchConfig(options=OPTIONS, seed=3, batch_per_device=1)
        mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))
        assert [r.status for r in run_batch(weights, jobs, cfg, mesh=mesh, progress=False)] == ["ok"] * 3
        outs[n_dev] = [sf.read(j.output, dtype="float32")[0] for j in jobs]
    for a, b in zip(outs[1], outs[8]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _windows_one_at_a_time(weights, path, seed, options):
    """The long-file output composed from the public pieces, one window per call: prepare → low-pass → cut
    → each window generated alone with the noise of (seed, channel 0, window w) → low-band copy with one
    energy ratio pooled over the windows → overlap-add → normalise → cut. Returns (output [n], raw windows)."""
    wave, info = audio.prepare_waveform(str(path))
    n = int(info["samples"])
    plan = windows.plan_windows(n, max_window=2 * audio.SEGMENT_SAMPLES)
    cover = plan.starts[-1] + plan.window
    ch = np.pad(wave[0], (0, max(0, cover - wave.shape[1])))[:cover]
    ftype = lowpass.filter_type("official", seed)  # the engine's default: the official tool's draw
    lp = windows.cut_windows(lowpass.prepare_lowpass(ch, ftype=ftype)[0][None].astype(np.float32), plan)[0]
    steps = num_sampler_steps(options, weights)

    def one(w, key_window):
        noise = draw_noise(item_keys(seed, [0], [key_window]), latent_shape(plan.window // audio.HOP, weights), steps)
        return np.asarray(super_resolve_windows(weights, jnp.asarray(lp[w][None]), noise, options,
                                                replace_low_band=False))[0]

    raw = np.stack([one(w, w) for w in range(len(plan.starts))])
    energies = [postprocess.low_band_energy(raw[w][None], lp[w][None]) for w in range(len(raw))]
    ratio = postprocess.energy_ratio(sum(e[0] for e in energies), sum(e[1] for e in energies))
    done = np.stack([np.asarray(postprocess.replace_low_stft(raw[w][None], lp[w][None], ratio))[0]
                     for w in range(len(raw))])
    y = windows.overlap_add(done[None, :, : plan.window], plan)
    y = np.asarray(postprocess.normalize_output(jnp.asarray(y)))[0, :n]
    return y, raw, plan, one


def test_long_file_is_windowed_and_cross_faded(tmp_path, weights):
    """Batches of 2 items over 3 windows (one dummy): equal to the windows generated one at a time under the
    same per-window noise keys, overlap-added; each window has its own noise; no audible seam."""
    p = tmp_path / "long.wav"
    sf.write(p, _signal(16000, 12.0, cutoff=4000), 16000)
    jobs = assign_outputs(expand_inputs([str(p)]), str(tmp_path / "o" / "long.wav"))
    [r] = run_batch(weights, jobs, BatchConfig(options=OPTIONS, seed=5, batch_per_device=2),
                    mesh=Mesh(np.asarray(jax.devices()[:1]), ("data",)), progress=False)
    assert r.status == "ok" and r.windows >= 2
    got, sr = sf.read(jobs[0].output, dtype="float32")
    assert sr == 48000 and len(got) == 12 * 48000
    want, raw, plan, one = _windows_one_at_a_time(weights, p, 5, OPTIONS)
    assert len(plan.starts) == r.windows
    np.testing.assert_allclose(got, want, atol=2e-5)  # 24-bit output; batch-size effects in fp32
    # distinct noise per window: window 1 under window 0's key is another output
    assert np.max(np.abs(one(1, 0) - raw[1])) > 1e-2 * np.max(np.abs(raw[1]))
    seams = windows.seam_flux(got, plan)
    assert seams["seams"] == len(plan.starts) - 1 and max(seams["ratio"], seams["tail_ratio"]) < SEAM_RATIO_MAX, seams


def _snr_db(y, ref):
    return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((y - ref) ** 2), 1e-30))


@pytest.mark.parametrize("sampler,dtype,reference,min_snr_db", [
    ("dpmpp_2m", "float32", "euler", 25.0), ("unipc", "float32", "euler", 25.0),  # measured 32.0, 32.0 dB
    ("ddim", "bfloat16", "ddim", 35.0)])  # measured 42.3 dB
def test_fast_samplers_and_bf16_run_end_to_end(tmp_path, weights, sampler, dtype, reference, min_snr_db):
    """Against fp32: bf16 DDIM vs fp32 DDIM (same noise); the multistep ODE samplers vs Euler (DDIM η=0)
    on the same probability-flow ODE from the same start."""
    p = tmp_path / "x.wav"
    sf.write(p, _signal(16000, 1.0, cutoff=4000), 16000)
    wave, info = audio.prepare_waveform(str(p))
    y, _ = super_resolve_waveform(weights, wave, info, SamplingOptions(steps=3, sampler=sampler, dtype=dtype))
    ref, _ = super_resolve_waveform(weights, wave, info, SamplingOptions(steps=3, sampler=reference))
    assert y.shape == ref.shape and np.all(np.isfinite(y))
    assert 0.1 < np.max(np.abs(y)) <= 0.5 + 1e-6  # peak 0.5 over the padded window, as the reference
    assert _snr_db(y, ref) >= min_snr_db


def test_match_loudness_and_stale_partials(tmp_path, weights):
    import pyloudnorm

    p = tmp_path / "quiet.wav"
    x = 0.05 * _signal(16000, 2.0, cutoff=4000) / 0.3
    sf.write(p, x, 16000, subtype="FLOAT")
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    stale = out_dir / ".quiet.wav.partial-abc.wav"  # what a kill -9 during a write would leave
    stale.write_bytes(b"half a file")
    # another output's write in flight (another process of a multi-host job, or another run): not ours to remove
    in_flight = out_dir / ".loud.wav.partial-def.wav"
    in_flight.write_bytes(b"being written")
    jobs = assign_outputs(expand_inputs([str(p)]), str(out_dir))
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    [r] = run_batch(weights, jobs, BatchConfig(options=OPTIONS, match_loudness=True), mesh=mesh, progress=False)
    assert r.status == "ok" and not stale.exists() and in_flight.exists()
    y, sr = sf.read(jobs[0].output)
    want = pyloudnorm.Meter(16000).integrated_loudness(x[:, 0])
    got = pyloudnorm.Meter(sr).integrated_loudness(y)
    assert got == pytest.approx(want, abs=0.5)


def test_official_lowpass_family_follows_the_seed(tmp_path, weights):
    """The official tool draws the condition's filter family from numpy right after seeding: 42 → elliptic,
    7 → Bessel, 11 → Chebyshev I. "official" (the default) equals naming that family, and differs from another."""
    assert [lowpass.filter_type("official", s) for s in (42, 7, 11)] == ["ellip", "bessel", "cheby1"]
    p = tmp_path / "x.wav"
    sf.write(p, _signal(16000, 0.6, cutoff=4000), 16000)
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))

    def out(seed, family):
        jobs = assign_outputs(expand_inputs([str(p)]), str(tmp_path / f"o-{seed}-{family}.wav"))
        [r] = run_batch(weights, jobs, BatchConfig(options=OPTIONS, seed=seed, lowpass=family), mesh=mesh,
                        progress=False)
        assert r.status == "ok", r.reason
        return sf.read(jobs[0].output)[0]

    for seed, family, other in [(7, "bessel", "ellip"), (11, "cheby1", "butter")]:
        official = out(seed, "official")
        np.testing.assert_array_equal(official, out(seed, family))
        assert np.max(np.abs(official - out(seed, other))) > 1e-4
