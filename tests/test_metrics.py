"""Known-answer tests of audiosr_jax.metrics (both LSD families, SI-SDR, SNR), and agreement with direct
transcriptions of the published formulas on librosa.stft (ssr_eval) and a reflect-padded STFT (NU-Wave 2)."""

import librosa
import numpy as np
import pytest

from audiosr_jax import metrics as M
from audiosr_jax.inference.lowpass import lowpass_filter

SR = 48000
GAIN_6DB = 10 ** (6 / 20)


def noise(n=SR, seed=0, scale=0.1):
    return scale * np.random.default_rng(seed).standard_normal(n)


def test_stft_params_and_split():
    assert M.ssr_eval_stft_params(48000) == (2229, 480)
    assert M.ssr_eval_stft_params(44100) == (2048, 441)
    assert M.band_split_index(4000) == int(1025 * 8000 / 48000) == 170
    assert M.band_split_index(12000) == 512


def test_stft_matches_librosa():
    x = noise(10_000)
    for n_fft, hop, mode in ((2229, 480, "constant"), (2048, 512, "reflect")):
        ref = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, center=True, pad_mode=mode)).T
        got = M.stft_magnitude(x, n_fft, hop, pad_mode=mode)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_lsd_matches_ssr_eval_formula():
    ref, est = noise(30_000, 1), noise(30_000, 2)
    s_ref = np.abs(librosa.stft(ref, n_fft=2229, hop_length=480)).T
    s_est = np.abs(librosa.stft(est, n_fft=2229, hop_length=480)).T
    expected = np.mean(np.sqrt(np.mean(np.log10(s_ref**2 / (s_est + 1e-12) ** 2 + 1e-12) ** 2, axis=1)))
    assert M.lsd(ref, est) == pytest.approx(expected, rel=1e-9)


def test_lsd_bands_match_nuwave2_formula():
    ref, est = noise(30_000, 1), noise(30_000, 2) + 0.5 * noise(30_000, 1)
    spec = lambda x: np.abs(librosa.stft(x, n_fft=2048, hop_length=512, center=True, pad_mode="reflect"))  # noqa: E731
    p_ref = np.log10(np.maximum(spec(ref) ** 2, 1e-8))  # [F, T] as torch.stft
    p_est = np.log10(np.maximum(spec(est) ** 2, 1e-8))
    hf = int(1025 * 8000 / 48000)
    lsd_of = lambda a, b: np.mean(np.sqrt(np.mean((a - b) ** 2, axis=0)))  # noqa: E731
    got = M.lsd_bands(ref, est, 4000)
    assert got["lsd"] == pytest.approx(lsd_of(p_est, p_ref), rel=1e-9)
    assert got["lsd_hf"] == pytest.approx(lsd_of(p_est[hf:], p_ref[hf:]), rel=1e-9)
    assert got["lsd_lf"] == pytest.approx(lsd_of(p_est[:hf], p_ref[:hf]), rel=1e-9)
    assert M.lsd_hf(ref, est, 4000) == got["lsd_hf"] and M.lsd_lf(ref, est, 4000) == got["lsd_lf"]
    assert M.lsd_nuwave2(ref, est) == got["lsd"]


def test_lsd_bands_within_a_narrow_references_band():
    """max_hz (the reference's own bandwidth) drops the bins from band_split_index(max_hz) up from every band."""
    ref, est = noise(30_000, 1), noise(30_000, 2) + 0.5 * noise(30_000, 1)
    spec = lambda x: np.abs(librosa.stft(x, n_fft=2048, hop_length=512, center=True, pad_mode="reflect"))  # noqa: E731
    p_ref, p_est = (np.log10(np.maximum(spec(x) ** 2, 1e-8)) for x in (ref, est))
    hf, top = int(1025 * 8000 / 48000), int(1025 * 32000 / 48000)  # cutoff 4 kHz, reference band 16 kHz
    lsd_of = lambda a, b: np.mean(np.sqrt(np.mean((a - b) ** 2, axis=0)))  # noqa: E731
    got = M.lsd_bands(ref, est, 4000, max_hz=16000)
    assert got["lsd"] == pytest.approx(lsd_of(p_est[:top], p_ref[:top]), rel=1e-9)
    assert got["lsd_hf"] == pytest.approx(lsd_of(p_est[hf:top], p_ref[hf:top]), rel=1e-9)
    assert got["lsd_lf"] == pytest.approx(lsd_of(p_est[:hf], p_ref[:hf]), rel=1e-9)
    assert M.lsd_bands(ref, est, 4000, max_hz=24000) == M.lsd_bands(ref, est, 4000)  # full band: unchanged
    below = M.lsd_bands(ref, est, 8000, max_hz=6000)  # the reference ends below the cutoff: no generated band
    assert "lsd_hf" not in below and below["lsd_lf"] == pytest.approx(lsd_of(p_est[:256], p_ref[:256]), rel=1e-9)


def test_identical_signals():
    x = noise()
    assert M.lsd(x, x) < 1e-9
    assert M.lsd_energy_scaled(x, x) < 1e-9
    assert M.lsd_bands(x, x, 6000) == {"lsd": 0.0, "lsd_hf": 0.0, "lsd_lf": 0.0}
    assert M.si_sdr(x, x) == M.DB_LIMIT
    assert M.snr(x, x) == M.DB_LIMIT


def test_6db_copy_known_lsd_and_scale_invariance():
    x = noise()
    # a 6 dB level change is log10(power ratio) = 0.6 in every bin, so 0.6 in both LSD families
    assert M.lsd(x, GAIN_6DB * x) == pytest.approx(0.6, abs=1e-6)
    assert M.lsd_nuwave2(x, GAIN_6DB * x) == pytest.approx(0.6, abs=1e-6)
    assert M.lsd(GAIN_6DB * x, x) == pytest.approx(0.6, abs=1e-6)
    # the energy-scaled variant removes the level difference
    assert M.lsd_energy_scaled(x, GAIN_6DB * x) < 1e-6
    y = x + 0.3 * noise(seed=5)
    base = M.si_sdr(x, y)
    assert base == pytest.approx(10 * np.log10(1 / 0.09), abs=0.3)
    for g in (GAIN_6DB, 0.01, -3.0):
        assert M.si_sdr(x, g * y) == pytest.approx(base, abs=1e-9)
    assert M.snr(x, GAIN_6DB * x) == pytest.approx(-20 * np.log10(GAIN_6DB - 1), abs=1e-9)


def test_lowpassed_signal_kept_and_generated_bands():
    x = noise(SR, 3)
    y = lowpass_filter(x, 6000, SR, order=8, ftype="ellip")
    b = M.lsd_bands(x, y, 6000)
    assert b["lsd_lf"] < 0.3  # the kept band is (nearly) untouched
    assert b["lsd_hf"] > 3.0  # the band above the cutoff is gone
    assert M.lsd(x, y) > 3.0


def test_length_mismatch_trims_to_shorter():
    x, y = noise(SR, 1), noise(SR, 2)
    n = SR - 700
    assert M.lsd(x, y[:n]) == M.lsd(x[:n], y[:n])
    assert M.lsd_bands(x[:n], y, 5000) == M.lsd_bands(x[:n], y[:n], 5000)
    assert M.si_sdr(x, y[:n]) == M.si_sdr(x[:n], y[:n])


def test_silence_and_bad_input():
    x = noise()
    z = np.zeros_like(x)
    for fn in (M.lsd, M.lsd_energy_scaled, M.lsd_nuwave2, M.si_sdr, M.snr):
        with pytest.raises(M.MetricError, match="silent"):
            fn(z, x)
        assert np.isfinite(fn(x, z))  # a silent estimate is scored, not NaN
    assert M.si_sdr(x, z) == -M.DB_LIMIT
    assert M.snr(x, z) == 0.0
    assert M.lsd(x, z) > 10.0
    with pytest.raises(M.MetricError, match="too short"):
        M.lsd(x[:2000], x[:2000])
    bad = x.copy()
    bad[10] = np.nan
    with pytest.raises(M.MetricError, match="NaN"):
        M.lsd(x, bad)
    with pytest.raises(M.MetricError, match="empty band"):
        M.lsd_hf(x, x, 24000)
    with pytest.raises(M.MetricError):
        M.lsd(np.stack([x, x]), x)


def test_multichannel_mean_and_silent_channel_skipped():
    a, b = noise(SR, 1), noise(SR, 2)
    ea, eb = a + 0.1 * noise(SR, 3), GAIN_6DB * b
    stereo = M.lsd(np.stack([a, b]), np.stack([ea, eb]))
    assert stereo == pytest.approx((M.lsd(a, ea) + M.lsd(b, eb)) / 2, rel=1e-12)
    z = np.zeros_like(a)
    assert M.si_sdr(np.stack([a, z]), np.stack([ea, eb])) == M.si_sdr(a, ea)
