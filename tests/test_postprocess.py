"""Post-processing (audiosr_jax.inference.postprocess) against numpy/librosa transcriptions of the reference."""

import librosa
import numpy as np
import pytest

from audiosr_jax import audio
from audiosr_jax.inference import lowpass as lp, postprocess as pp

N = audio.SEGMENT_SAMPLES
M = N + 16  # vocoder output length for N input samples


def _ref_find_cutoff(x, percentile=0.985):
    percentile = x[-1] * percentile
    for i in range(1, x.shape[0]):
        if x[-i] < percentile:
            return x.shape[0] - i
    return 0


def _ref_mel_replace(samples, lowpass_mel):
    # mel_replace_ops, per item, float64
    samples = samples.copy()
    for i in range(samples.shape[0]):
        k = _ref_find_cutoff(np.cumsum(np.sum(np.exp(lowpass_mel[i].astype(np.float64)), axis=0)))
        samples[i][..., :k] = lowpass_mel[i][..., :k]
    return samples


def _ref_postprocessing(out_batch, x_batch):
    # ddpm.py postprocessing with librosa stft/istft (defaults as in 0.9.2), float64
    out_batch = out_batch.astype(np.float64).copy()
    for i in range(out_batch.shape[0]):
        out, x = out_batch[i], x_batch[i].astype(np.float64)
        k = _ref_find_cutoff(np.cumsum(np.sum(np.abs(librosa.stft(x)), axis=-1)))
        s_gt, s_out = librosa.stft(x), librosa.stft(out)
        r = np.sum(np.abs(s_gt[k])) / np.sum(np.abs(s_out[k, ...]))
        r = min(max(r, 0.8), 1.2)
        s_out[:k, ...] = s_gt[:k, ...] / r
        out_batch[i] = librosa.istft(s_out, length=out.shape[0])
    return out_batch


def _band_noise(cutoff, seed, n=N):
    x = np.random.default_rng(seed).standard_normal(n)
    return audio.normalize_wav(lp.lowpass_filter(x, cutoff)).astype(np.float32)


def test_cutoff_index_batched_matches_reference_loop():
    rng = np.random.default_rng(0)
    mags = rng.random((64, 256)) * (np.arange(256) < rng.integers(2, 256, (64, 1)))
    mags[0] = 0
    mags[1] = 0
    mags[1, 0] = 1.0  # all energy in bin 0 -> 0
    e = np.cumsum(mags, axis=-1).astype(np.float32)
    got = np.asarray(pp.cutoff_index(e))
    assert got.dtype == np.int32
    assert got.tolist() == [_ref_find_cutoff(row) for row in e]


def test_mel_replacement_matches_reference():
    rng = np.random.default_rng(1)
    lowpass_mel = np.stack([
        np.asarray(audio.log_mel_spectrogram(_band_noise(c, s)[None])[0])[0] for c, s in [(4000, 0), (9000, 1)]
    ])
    mel = rng.normal(-5, 2, lowpass_mel.shape).astype(np.float32)
    k = np.asarray(pp.mel_cutoff_bin(lowpass_mel))
    ref_k = [_ref_find_cutoff(np.cumsum(np.exp(m.astype(np.float64)).sum(axis=0))) for m in lowpass_mel]
    assert k.tolist() == ref_k and ref_k[0] < ref_k[1]
    got = np.asarray(pp.replace_low_mel(mel, lowpass_mel))
    np.testing.assert_array_equal(got, _ref_mel_replace(mel, lowpass_mel))
    assert got.shape == mel.shape and got.dtype == np.float32


def test_stft_istft_match_librosa():
    rng = np.random.default_rng(2)
    x = (0.3 * rng.standard_normal((2, M))).astype(np.float32)
    s = np.asarray(pp.stft_librosa(x))  # [B, F, 1025]
    ref = np.stack([librosa.stft(r.astype(np.float64)) for r in x]).transpose(0, 2, 1)
    assert s.shape == ref.shape == (2, 1 + M // 512, 1025)
    assert np.max(np.abs(s - ref)) <= 1e-5 * np.max(np.abs(ref))
    y = np.asarray(pp.istft_librosa(ref.astype(np.complex64), M))
    y_ref = np.stack([librosa.istft(r.T, length=M) for r in ref])
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_allclose(y, x, atol=1e-6)  # perfect reconstruction, edges included


def test_replace_low_stft_matches_reference():
    rng = np.random.default_rng(3)
    x = np.stack([_band_noise(4000, 4), _band_noise(10000, 5), _band_noise(7000, 6)])
    high = (0.05 * rng.standard_normal((2, M))).astype(np.float32)
    # ratio at the cutoff row: item 0 ~0.84 (inside [0.8, 1.2]); item 1 ~0.23 (clamped to 0.8);
    # item 2 ~2 (clamped to 1.2)
    out = np.stack([
        1.1 * np.pad(x[0], (0, 16)) + high[0], 0.3 * rng.standard_normal(M), 0.5 * np.pad(x[2], (0, 16)) + high[1]
    ]).astype(np.float32)
    got = np.asarray(pp.replace_low_stft(out, x))
    ref = _ref_postprocessing(out, x)
    assert got.shape == (3, M) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-6)


@pytest.mark.parametrize("n_in", [N - 16, N + 600])
def test_replace_low_stft_other_lengths(n_in):
    # the reference only runs when both STFTs have the same frame count; here x is fitted to M first
    rng = np.random.default_rng(6)
    x = _band_noise(5000, 7, n_in)[None]
    out = (0.3 * rng.standard_normal((1, M))).astype(np.float32)
    got = np.asarray(pp.replace_low_stft(out, x))
    x_fit = np.pad(x, ((0, 0), (0, max(0, M - n_in))))[:, :M]
    np.testing.assert_allclose(got, _ref_postprocessing(out, x_fit), atol=2e-6)


def test_normalize_output():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((3, 1000)).astype(np.float32) + 0.2
    w[2] = 0
    got = np.asarray(pp.normalize_output(w))
    for i in range(2):
        r = 0.5 * w[i] / np.max(np.abs(w[i]))
        r = r - np.mean(r)
        np.testing.assert_allclose(got[i], r, atol=1e-6)
    assert not np.any(got[2])  # the reference would give NaN here


def test_explicit_ratio_from_low_band_energy_matches_the_per_item_ratio():
    from audiosr_jax.inference.postprocess import energy_ratio, low_band_energy, replace_low_stft

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 245760)).astype(np.float32)
    spec = np.fft.rfft(x, axis=-1)
    spec[:, np.fft.rfftfreq(x.shape[-1], 1 / 48000) > 5000] = 0
    lp = np.fft.irfft(spec, x.shape[-1], axis=-1).astype(np.float32)
    out = (0.7 * lp[:, :] + 0.1 * rng.standard_normal(lp.shape)).astype(np.float32)
    out = np.pad(out, ((0, 0), (0, 16)))
    row_x, row_out = low_band_energy(out, lp)
    own = replace_low_stft(out, lp)
    given = replace_low_stft(out, lp, energy_ratio(row_x, row_out))
    np.testing.assert_allclose(given, own, atol=1e-6)
    # A pooled ratio (as the batch engine uses per channel) changes the low band's gain only.
    pooled = replace_low_stft(out, lp, np.full((2,), 1.1, np.float32))
    assert np.max(np.abs(np.asarray(pooled) - np.asarray(own))) > 1e-3
