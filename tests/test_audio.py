"""Audio loading / validation, waveform preparation and the mel front-end (audiosr_jax.audio)."""

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosr_jax import audio
from audiosr_jax.errors import AudioError, UserError


def _tone(sr=16000, seconds=0.5, freq=440.0, channels=1, amp=0.3):
    t = np.arange(int(sr * seconds)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def _noise(n, seed=0):
    return audio.normalize_wav(np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ constants


def test_constants():
    assert (audio.SAMPLE_RATE, audio.HOP, audio.N_FFT, audio.N_MELS) == (48000, 480, 2048, 256)
    assert audio.SEGMENT_SAMPLES == 245760 == int(5.12 * 48000)


# ------------------------------------------------------------------------------------------------ loading


def test_load_audio_wav_and_flac(tmp_path):
    x = _tone(22050, 0.3, channels=2)
    p = tmp_path / "st.wav"
    sf.write(p, x, 22050, subtype="FLOAT")
    y, sr = audio.load_audio(p)
    assert sr == 22050 and y.dtype == np.float32 and y.shape == (2, x.shape[0])
    np.testing.assert_array_equal(y, x.T)

    p = tmp_path / "mono.flac"
    sf.write(p, x[:, :1], 44100, subtype="PCM_16")
    y, sr = audio.load_audio(str(p))
    assert sr == 44100 and y.shape == (1, x.shape[0])
    np.testing.assert_allclose(y[0], x[:, 0], atol=1 / 32768)


def _bad_files(tmp_path):
    """name -> (path, word expected in the lower-cased message)."""
    cases = {"missing.wav": (tmp_path / "missing.wav", "no such file")}
    p = tmp_path / "notaudio.wav"
    p.write_bytes(b"this is not audio at all\n" * 40)
    cases["notaudio.wav"] = (p, "not a readable audio file")
    p = tmp_path / "randombytes.flac"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases["randombytes.flac"] = (p, "not a readable audio file")
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    cases["empty.wav"] = (p, "empty")
    p = tmp_path / "zeroframes.wav"
    sf.write(p, np.zeros((0, 1), np.float32), 16000)
    cases["zeroframes.wav"] = (p, "zero length")
    for name, value in [("nan.wav", np.nan), ("inf.wav", np.inf), ("neginf.wav", -np.inf)]:
        x = _tone()
        x[100] = value
        p = tmp_path / name
        sf.write(p, x, 16000, subtype="FLOAT")
        cases[name] = (p, "nan" if name == "nan.wav" else "infinite")
    p = tmp_path / "lowrate.wav"
    sf.write(p, _tone(100, 2.0), 100)
    cases["lowrate.wav"] = (p, "sample rate")
    p = tmp_path / "highrate.wav"
    sf.write(p, _tone(1_000_000, 0.01), 1_000_000)
    cases["highrate.wav"] = (p, "sample rate")
    p = tmp_path / "three_ch.wav"
    sf.write(p, _tone(channels=3), 16000)
    cases["three_ch.wav"] = (p, "channels")
    p = tmp_path / "silent.wav"
    sf.write(p, np.zeros((16000, 2), np.float32), 16000)
    cases["silent.wav"] = (p, "silent")
    p = tmp_path / "dc.wav"
    sf.write(p, np.full((16000, 1), 0.25, np.float32), 16000, subtype="FLOAT")
    cases["dc.wav"] = (p, "silent")
    p = tmp_path / "truncated.wav"
    sf.write(p, _tone(), 16000)
    p.write_bytes(p.read_bytes()[:30])
    cases["truncated.wav"] = (p, "not a readable audio file")  # the header itself is cut
    d = tmp_path / "adir.wav"
    d.mkdir()
    cases["adir.wav"] = (d, "not a regular file")
    return cases


def test_load_audio_errors_are_one_line_and_name_the_file(tmp_path):
    for name, (path, word) in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as exc:
            audio.load_audio(path)
        msg = str(exc.value)
        assert isinstance(exc.value, UserError)
        assert "\n" not in msg and name in msg and word in msg.lower(), (name, msg)


def test_load_audio_max_channels(tmp_path):
    p = tmp_path / "st.wav"
    sf.write(p, _tone(channels=2), 16000)
    with pytest.raises(AudioError, match="at most 1"):
        audio.load_audio(p, max_channels=1)
    assert audio.load_audio(p, max_channels=2)[0].shape[0] == 2


def test_one_silent_channel_is_accepted(tmp_path):
    x = _tone(channels=2)
    x[:, 1] = 0
    p = tmp_path / "half.wav"
    sf.write(p, x, 16000)
    assert audio.load_audio(p)[0].shape == (2, x.shape[0])


# ------------------------------------------------------------------------------------------------ preparation


def test_resample_identity_and_tone():
    x = _tone(48000, 0.2)[:, 0][None]
    assert audio.resample(x, 48000) is x
    x = _tone(44100, 1.0, freq=1000.0, channels=2).T  # [2, 44100]
    y = audio.resample(x, 44100, 48000)
    assert y.shape == (2, 48000) and y.dtype == np.float32
    t = np.arange(48000) / 48000
    for c, amp in enumerate([0.15, 0.3]):
        ref = amp * np.sin(2 * np.pi * 1000 * t)
        np.testing.assert_allclose(y[c, 2000:-2000], ref[2000:-2000], atol=1e-3)


def test_normalize_wav_matches_reference_formula():
    x = np.random.default_rng(1).standard_normal((2, 1000)).astype(np.float32) + 0.3
    y = audio.normalize_wav(x)
    for c in range(2):
        r = x[c] - np.mean(x[c])
        r = r / (np.max(np.abs(r)) + 1e-8) * 0.5
        np.testing.assert_allclose(y[c], r, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.max(np.abs(y), axis=-1), 0.5, rtol=1e-6)


def test_pad_to_segments():
    s = audio.SEGMENT_SAMPLES
    for n, target in [(1, s), (s - 1, s), (s, s), (s + 1, 2 * s), (2 * s, 2 * s)]:
        x = np.ones((2, n), np.float32)
        y = audio.pad_to_segments(x)
        assert y.shape == (2, target) and y.dtype == np.float32
        assert np.all(y[:, :n] == 1) and np.all(y[:, n:] == 0)
    assert audio.pad_to_segments(np.ones(10), segment=4).shape == (12,)


def test_prepare_waveform(tmp_path):
    p = tmp_path / "in.wav"
    sf.write(p, _tone(16000, 1.3, channels=2) + 0.1, 16000, subtype="FLOAT")
    wave, info = audio.prepare_waveform(p)
    n = int(1.3 * 48000)
    assert wave.shape == (2, audio.SEGMENT_SAMPLES) and wave.dtype == np.float32
    assert info["orig_sr"] == 16000 and info["channels"] == 2 and info["samples"] == n
    assert info["duration_s"] == pytest.approx(1.3)
    assert info["padded_samples"] == audio.SEGMENT_SAMPLES and info["frames"] == 512
    # normalise (per channel) before padding: zero mean over the signal part, peak 0.5, zero tail
    np.testing.assert_allclose(np.max(np.abs(wave), axis=-1), 0.5, rtol=1e-5)
    np.testing.assert_allclose(np.mean(wave[:, :n], axis=-1), 0.0, atol=1e-6)
    assert not np.any(wave[:, n:])

    with pytest.raises(AudioError, match="nope.wav"):
        audio.prepare_waveform(tmp_path / "nope.wav")


# ------------------------------------------------------------------------------------------------ front-end


def _torch_reference_stft(wave):
    """mel_spectrogram_train's STFT exactly as the reference calls torch."""
    y = torch.nn.functional.pad(torch.from_numpy(wave).unsqueeze(1), (784, 784), mode="reflect").squeeze(1)
    s = torch.stft(y, 2048, hop_length=480, win_length=2048, window=torch.hann_window(2048), center=False,
                   pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return torch.abs(s).numpy().transpose(0, 2, 1)  # [B, T, 1025]


def test_stft_magnitude_matches_torch():
    n = audio.SEGMENT_SAMPLES
    t = np.arange(n) / 48000
    noise = _noise(n, 2)
    mixed = audio.normalize_wav(0.2 * np.sin(2 * np.pi * 3000 * t) + 0.8 * _noise(n, 3)).astype(np.float32)
    wave = np.stack([noise, mixed])
    got = np.asarray(audio.stft_magnitude(wave))
    ref = _torch_reference_stft(wave)
    assert got.shape == ref.shape == (2, 512, 1025) and got.dtype == np.float32
    # broadband noise: 1e-5 absolute. With a strong tone the frame's peak bin is ~50, and fp32 FFT rounding
    # (torch's and ours alike, ~3e-7 of the frame's peak against a float64 FFT) alone exceeds 1e-5
    assert np.max(np.abs(got[0] - ref[0])) <= 1e-5
    frame_peak = np.max(ref[1], axis=-1, keepdims=True)
    assert np.all(np.abs(got[1] - ref[1]) <= 1e-5 + 1e-6 * frame_peak)


@pytest.mark.parametrize("n", [audio.SEGMENT_SAMPLES, 2 * audio.SEGMENT_SAMPLES, 48000, 4800 + 479])
def test_frame_count(n):
    got = audio.stft_magnitude(np.zeros((1, n), np.float32))
    assert got.shape == (1, n // 480, 1025)
    if n % 480 == 0:
        assert _torch_reference_stft(np.zeros((1, n), np.float32)).shape[1] == n // 480


def test_mel_filterbank_is_librosa_slaney_and_cached():
    import librosa

    fb = audio.mel_filterbank()
    assert fb.shape == (256, 1025) and fb.dtype == np.float32 and not fb.flags.writeable
    assert audio.mel_filterbank() is fb
    ref = librosa.filters.mel(sr=48000, n_fft=2048, n_mels=256, fmin=20, fmax=24000)
    np.testing.assert_array_equal(fb, ref)


def test_log_mel_matches_numpy_recomputation():
    import librosa

    n = audio.SEGMENT_SAMPLES
    wave = np.stack([_noise(n, 4), audio.pad_to_segments(_noise(n // 3, 5))])  # second one: silent tail
    log_mel, stft = audio.log_mel_spectrogram(wave)
    log_mel, stft = np.asarray(log_mel), np.asarray(stft)
    assert log_mel.shape == (2, 512, 256) and stft.shape == (2, 512, 1024)

    # float64 re-computation of the reference formulas
    padded = np.pad(wave.astype(np.float64), ((0, 0), (784, 784)), mode="reflect")
    idx = np.arange(512)[:, None] * 480 + np.arange(2048)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)
    mag = np.abs(np.fft.rfft(padded[:, idx] * win, axis=-1))
    fb = librosa.filters.mel(sr=48000, n_fft=2048, n_mels=256, fmin=20, fmax=24000).astype(np.float64)
    ref = np.log(np.maximum(mag @ fb.T, 1e-5))
    assert np.max(np.abs(log_mel - ref)) <= 1e-4
    np.testing.assert_allclose(stft, mag[..., :1024], atol=1e-5)
    # the silent tail sits exactly on the floor log(1e-5)
    np.testing.assert_allclose(log_mel[1, -100:], np.log(np.float32(1e-5)), atol=1e-6)


def test_log_mel_batched_equals_single():
    n = audio.SEGMENT_SAMPLES
    wave = np.stack([_noise(n, 6), _noise(n, 7)])
    both = np.asarray(audio.log_mel_spectrogram(wave)[0])
    one = np.asarray(audio.log_mel_spectrogram(wave[1:])[0])
    np.testing.assert_allclose(both[1], one[0], atol=1e-6)


# ------------------------------------------------------------------------------------- CPU fast path (perf)


def test_banded_mel_projection_equals_dense():
    # the blocks cover every nonzero weight exactly once and drop only zeros
    fb = audio.mel_filterbank()
    rebuilt = np.zeros_like(fb)
    row = 0
    for lo, hi, w in audio._mel_blocks():
        rebuilt[row : row + w.shape[1], lo:hi] = w.T
        row += w.shape[1]
    assert row == fb.shape[0]
    np.testing.assert_array_equal(rebuilt, fb)
    assert sum(w.size for _, _, w in audio._mel_blocks()) < fb.size // 10
    mag = np.abs(np.random.default_rng(0).standard_normal((3, 7, 1025))).astype(np.float32)
    mag[0, 0] = 0.0
    dense = np.asarray(audio.mel_dense(mag))
    banded = np.asarray(audio.mel_banded(mag))
    assert np.array_equal(dense == 0, banded == 0)
    assert np.max(np.abs(banded - dense) / np.maximum(dense, 1e-30)) <= 1e-6


def test_cpu_per_item_path_equals_batched_form():
    # the CPU branch (lax.map over items, banded mel) against the accelerator branch run on the CPU
    import jax

    n = audio.SEGMENT_SAMPLES
    wave = np.stack([_noise(n, 8), audio.pad_to_segments(_noise(n // 4, 9)), 1e-4 * _noise(n, 10)])
    mag = np.asarray(audio.stft_magnitude(wave))
    np.testing.assert_array_equal(mag, np.asarray(jax.jit(audio.stft_mag_frames)(wave)))
    log_mel, stft = (np.asarray(v) for v in audio.log_mel_spectrogram(wave))
    ref_mel, ref_stft = (np.asarray(v) for v in jax.jit(
        lambda w: audio.log_mel_from(audio.stft_mag_frames(w), audio.mel_dense))(wave))
    np.testing.assert_array_equal(stft, ref_stft)
    # log of mels within 1e-6 relative of each other: |d log| <= 1e-6 plus one float32 ulp of the log
    assert np.max(np.abs(log_mel - ref_mel)) <= 1e-6 + 2e-6


def test_log_mel_gradient_is_finite_on_silence():
    # the GAN mel loss differentiates through the front-end; silent (all-zero) frames must not give NaN
    import jax
    import jax.numpy as jnp

    n = 48000
    wave = np.stack([_noise(n, 11), np.zeros(n, np.float32)])
    g = jax.grad(lambda w: jnp.sum(audio.log_mel_spectrogram(w)[0]) + jnp.sum(audio.stft_magnitude(w)))(
        jnp.asarray(wave))
    assert np.all(np.isfinite(np.asarray(g)))
