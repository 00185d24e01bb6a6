"""Inference low-pass preparation (audiosr_jax.inference.lowpass) against the reference formulas."""

import logging

import numpy as np
import pytest
from scipy import signal

from audiosr_jax import audio
from audiosr_jax.inference import lowpass as lp

N = audio.SEGMENT_SAMPLES


def _ref_find_cutoff(x, percentile):
    # the reference _find_cutoff, transcribed
    percentile = x[-1] * percentile
    for i in range(1, x.shape[0]):
        if x[-i] < percentile:
            return x.shape[0] - i
    return 0


def _band_noise(cutoff, seed=0, n=N):
    x = np.random.default_rng(seed).standard_normal(n)
    return audio.normalize_wav(lp.lowpass_filter(x, cutoff)).astype(np.float32)


def _gain_db(y, x, freq, sr=48000):
    # amplitude of `freq` in y relative to x (least squares on sin/cos, middle of the signal)
    sl = slice(len(x) // 4, 3 * len(x) // 4)
    t = np.arange(len(x))[sl] / sr
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    amp = lambda s: np.linalg.norm(np.linalg.lstsq(basis, s[sl], rcond=None)[0])  # noqa: E731
    return 20 * np.log10(amp(y) / amp(x))


def test_cutoff_index_matches_reference_loop():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mag = rng.random(1024) * (rng.random(1024) < rng.random())
        e = np.cumsum(mag)
        assert lp.cutoff_index(e) == _ref_find_cutoff(e, 0.985)
    assert lp.cutoff_index(np.ones(8)) == 0  # no bin below the threshold
    assert lp.cutoff_index(np.array([0.0, 0.0, 1.0])) == 1  # index 0 is never reported
    assert lp.cutoff_index(np.zeros(4)) == 0  # silence


def test_detect_cutoff_hz_formula():
    rng = np.random.default_rng(1)
    st = rng.random((40, 1024)) * (np.arange(1024) < 300)
    k = _ref_find_cutoff(np.cumsum(st.sum(axis=0)), 0.985)
    assert lp.detect_cutoff_hz(st) == k / 1024 * 24000
    assert 0 < k < 300


@pytest.mark.parametrize("cutoff", [4000, 11000])
def test_detect_cutoff_on_low_passed_noise(cutoff):
    x = _band_noise(cutoff)
    _, stft = audio.log_mel_spectrogram(x[None])
    hz = lp.detect_cutoff_hz(np.asarray(stft)[0])
    # the 0.985 magnitude rule lands a few bins under the filter's edge
    assert 0.95 * cutoff < hz < cutoff
    if cutoff == 4000:
        assert hz == 167 / 1024 * 24000  # 3914.06 Hz, as measured on the reference for such a clip


def _reference_chain(x, highcut, fs=48000, order=8):
    # lowpass_filter + stft_hard_lowpass of the reference, for ftype "ellip", written out
    hi = int(highcut) / (0.5 * fs)
    sos = signal.ellip(order, 0.1, 60, hi, btype="low", output="sos")
    y = signal.sosfiltfilt(sos, x)
    fs_down = int(hi * fs)
    z = signal.resample_poly(signal.resample_poly(y, fs_down, fs), fs, fs_down)
    z = np.pad(z, (0, max(0, len(y) - len(z))))[: len(y)]
    return signal.sosfiltfilt(sos, z)


def test_lowpass_filter_equals_reference_chain():
    x = _band_noise(20000, seed=2, n=48000)
    for cutoff in [3914.0625, 7000.7, 23976.5625]:
        np.testing.assert_array_equal(lp.lowpass_filter(x, cutoff), _reference_chain(x, cutoff))


def test_lowpass_filter_pass_and_stop_band():
    n = 48000
    t = np.arange(n) / 48000
    cutoff = 4000.0
    for freq, lo, hi in [(1000, -0.25, 0.25), (3000, -0.25, 0.25), (4800, -np.inf, -60), (8000, -np.inf, -60)]:
        x = np.sin(2 * np.pi * freq * t)
        y = lp.lowpass_filter(x, cutoff)
        assert y.shape == x.shape
        assert lo <= _gain_db(y, x, freq) <= hi, freq


def test_lowpass_filter_types_and_errors():
    x = _band_noise(20000, seed=3, n=9600)
    for ftype in ["butter", "cheby1", "cheby2", "ellip", "bessel"]:
        y = lp.lowpass_filter(x, 5000, ftype=ftype)
        assert y.shape == x.shape and np.all(np.isfinite(y))
    with pytest.raises(ValueError):
        lp.lowpass_filter(x, 5000, ftype="fir")
    for bad in [24000, 30000, 0.5]:
        with pytest.raises(ValueError):
            lp.lowpass_filter(x, bad)


def test_prepare_lowpass_matches_reference_steps():
    x = audio.pad_to_segments(_band_noise(6000, seed=4, n=100000))
    _, stft = audio.log_mel_spectrogram(x[None])
    stft = np.asarray(stft)[0]
    y, cutoff = lp.prepare_lowpass(x, stft)
    k = _ref_find_cutoff(np.cumsum(np.abs(stft).astype(np.float64).sum(axis=0)), 0.985)
    assert cutoff == k / 1024 * 24000 and 1000 < cutoff < 6000
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, _reference_chain(x, cutoff).astype(np.float32))
    # the STFT is computed internally when not given
    y2, cutoff2 = lp.prepare_lowpass(x)
    assert cutoff2 == cutoff
    np.testing.assert_array_equal(y2, y)


def test_prepare_lowpass_below_1khz_clamps_and_warns(caplog):
    t = np.arange(N) / 48000
    x = audio.normalize_wav(np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    _, stft = audio.log_mel_spectrogram(x[None])
    assert lp.detect_cutoff_hz(np.asarray(stft)[0]) < 1000  # the reference would crash here
    with caplog.at_level(logging.WARNING, logger="audiosr_jax.inference.lowpass"):
        y, cutoff = lp.prepare_lowpass(x, np.asarray(stft)[0])
    assert cutoff == lp.MIN_CUTOFF_HZ == 1000.0
    assert any("below 1000 Hz" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(y, _reference_chain(x, 1000.0).astype(np.float32))
    assert abs(_gain_db(y, x, 200)) < 0.25  # the content below 1 kHz is kept

    # a silent channel (the other channel of a file can be silent) gives zeros, not a crash
    y, cutoff = lp.prepare_lowpass(np.zeros(N, np.float32))
    assert cutoff == 1000.0 and not np.any(y)


def test_prepare_lowpass_rejects_2d():
    with pytest.raises(ValueError):
        lp.prepare_lowpass(np.zeros((2, 4800), np.float32))


def test_reference_filter_type_follows_the_seed():
    assert lp.reference_filter_type(42) == "ellip" == lp.FILTER_TYPE
    assert [lp.reference_filter_type(s) for s in (0, 1, 1234)] == ["butter", "cheby1", "bessel"]
    x = audio.pad_to_segments(_band_noise(6000, seed=5, n=20000))
    y, _ = lp.prepare_lowpass(x, ftype="bessel")
    assert y.shape == x.shape and np.all(np.isfinite(y))


# ------------------------------------------------------------------------------- cached resampling filter


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("up,down", [(4002, 48000), (48000, 4002), (3000, 48000), (48000, 31998), (7, 7), (2, 3)])
def test_cached_resample_poly_is_bit_identical(up, down, dtype):
    from scipy import signal as sps

    from audiosr_jax import filters as F

    x = np.random.default_rng(up + down).standard_normal((2, 4801)).astype(dtype)
    for _ in range(2):  # design, then the cached filter
        got = F._resample_poly(x, up, down)
        ref = sps.resample_poly(x, up, down, axis=-1)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
    if up != down:
        assert not F._resample_fir(max(up, down) // np.gcd(up, down)).flags.writeable


def test_resample_filter_is_shared_by_both_directions():
    from audiosr_jax import filters as F

    F._resample_fir.cache_clear()
    x = np.random.default_rng(0).standard_normal(48000)
    y = F.lowpass_filter(x, 8001.0)  # fs_down int(8001/24000*48000) = 16001 (rounds down), both ways
    info = F._resample_fir.cache_info()
    assert (info.misses, info.hits) == (1, 1) and y.shape == x.shape
    # the whole chain against scipy's own filter design
    sos = F.design(8, 8001 / 24000, "ellip")
    ref = signal.sosfiltfilt(sos, x)
    fs_down = int(8001 / 24000 * 48000)
    ref = signal.resample_poly(signal.resample_poly(ref, fs_down, 48000), 48000, fs_down)[: x.shape[0]]
    np.testing.assert_array_equal(y, signal.sosfiltfilt(sos, ref))
