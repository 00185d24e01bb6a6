"""Post-processing after sampling (reference: ``ddpm.py generate_batch``, ``mel_replace_ops``,
``postprocessing``); JAX, jit-able, batched.

Reference order: VAE decode -> ``replace_low_mel`` (hard copy of the low-passed input's log-mel below its
cutoff mel bin) -> vocoder -> ``replace_low_stft`` (copy the complex STFT of the *low-passed* input below its
cutoff bin, divided by an energy ratio clamped to [0.8, 1.2]) -> ``normalize_output`` (peak 0.5, then
mean removal). The waveform used for both replacements is the low-passed, normalised, padded input
(``waveform_lowpass``), never the raw input.

STFT/ISTFT follow librosa 0.9.2 ``stft``/``istft`` defaults as the reference calls them: n_fft 2048,
hop 512, periodic Hann, ``center=True`` with ``pad_mode="constant"`` (zeros), inverse by windowed
overlap-add divided by the summed squared window, cropped to the requested length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.audio import hann_periodic, frame_signal

CUTOFF_PERCENTILE = 0.985
PP_N_FFT = 2048
PP_HOP = 512
RATIO_MIN, RATIO_MAX = 0.8, 1.2


def cutoff_index(energy: jnp.ndarray, percentile: float = CUTOFF_PERCENTILE) -> jnp.ndarray:
    """Batched reference ``_find_cutoff``: highest i in [1, F-1] with ``energy[..., i] < percentile *
    energy[..., -1]``, else 0.

    Args: energy [..., F] (cumulative, non-decreasing). Returns: int32 [...].
    """
    energy = jnp.asarray(energy)
    f = energy.shape[-1]
    below = energy < percentile * energy[..., -1:]
    below = below.at[..., 0].set(False)
    last = f - 1 - jnp.argmax(below[..., ::-1], axis=-1)
    return jnp.where(jnp.any(below, axis=-1), last, 0).astype(jnp.int32)


@jax.jit
def mel_cutoff_bin(lowpass_log_mel: jnp.ndarray) -> jnp.ndarray:
    """Cutoff mel bin of the low-passed input (``mel_replace_ops``: 0.985 rule on ``exp(log_mel)`` summed
    over time, cumulated over the 256 mel bins).

    Args: lowpass_log_mel [B, T, 256]. Returns: int32 [B].
    """
    mag = jnp.exp(lowpass_log_mel.astype(jnp.float32))
    return cutoff_index(jnp.cumsum(jnp.sum(mag, axis=-2), axis=-1))


@jax.jit
def replace_low_mel(mel: jnp.ndarray, lowpass_mel: jnp.ndarray) -> jnp.ndarray:
    """``mel[b, :, :k_b] = lowpass_mel[b, :, :k_b]`` with k_b = :func:`mel_cutoff_bin` (hard copy).

    Args:
      mel: [B, T, 256] generated log-mel (VAE output with the channel axis squeezed).
      lowpass_mel: [B, T, 256] log-mel of the low-passed input.
    Returns: [B, T, 256], dtype of ``mel``.
    """
    k = mel_cutoff_bin(lowpass_mel)
    keep_low = jnp.arange(mel.shape[-1]) < k[:, None, None]
    return jnp.where(keep_low, lowpass_mel.astype(mel.dtype), mel)


def _n_frames(n: int) -> int:
    return 1 + n // PP_HOP


def stft_librosa(x: jnp.ndarray) -> jnp.ndarray:
    """``librosa.stft(x)`` (0.9.2 defaults: n_fft 2048, hop 512, Hann, center, zero padding), time first.

    Args: x [B, N] float. Returns: complex64 [B, 1 + N // 512, 1025].
    """
    x = jnp.asarray(x, jnp.float32)
    n_frames = _n_frames(x.shape[-1])
    half = PP_N_FFT // 2
    padded = jnp.pad(x, ((0, 0), (half, half)))
    frames = frame_signal(padded, PP_N_FFT, PP_HOP, n_frames) * jnp.asarray(hann_periodic(PP_N_FFT))
    return jnp.fft.rfft(frames, n=PP_N_FFT, axis=-1)


@functools.lru_cache(maxsize=None)
def _window_sumsquare(n_frames: int, length: int) -> np.ndarray:
    # librosa window_sumsquare, cropped by n_fft//2 as center=True does, fixed to `length`
    k = PP_N_FFT // PP_HOP
    w2 = hann_periodic(PP_N_FFT).astype(np.float64).reshape(k, PP_HOP) ** 2
    wss = np.zeros((n_frames + k - 1, PP_HOP), np.float64)
    for i in range(k):  # OLA of the squared window, block by block (hop divides n_fft)
        wss[i : i + n_frames] += w2[i]
    wss = wss.reshape(-1)
    wss = wss[PP_N_FFT // 2 :][:length]
    wss = np.pad(wss, (0, max(0, length - wss.shape[0])))
    tiny = np.finfo(np.float32).tiny
    safe = np.where(wss > tiny, wss, 1.0).astype(np.float32)  # positions with ~0 weight are left as is
    safe.flags.writeable = False
    return safe


def istft_librosa(spec: jnp.ndarray, length: int) -> jnp.ndarray:
    """``librosa.istft(spec, length=length)`` (hop 512, Hann, center=True), time-first input.

    Args: spec complex [B, F, 1025] with F >= 1 + length // 512 (extra frames are ignored, as librosa
      trims them). Returns: float32 [B, length].
    """
    n_frames = min(spec.shape[-2], -(-(length + PP_N_FFT) // PP_HOP))
    spec = spec[:, :n_frames]
    frames = jnp.fft.irfft(spec, n=PP_N_FFT, axis=-1).astype(jnp.float32)
    frames = frames * jnp.asarray(hann_periodic(PP_N_FFT))
    b = frames.shape[0]
    k = PP_N_FFT // PP_HOP
    # overlap-add: frame t, block i lands on output block t + i
    blocks = frames.reshape(b, n_frames, k, PP_HOP)
    y = sum(jnp.pad(blocks[:, :, i], ((0, 0), (i, k - 1 - i), (0, 0))) for i in range(k))
    y = y.reshape(b, (n_frames + k - 1) * PP_HOP)[:, PP_N_FFT // 2 :]
    if y.shape[-1] >= length:
        y = y[:, :length]
    else:
        y = jnp.pad(y, ((0, 0), (0, length - y.shape[-1])))
    return y / jnp.asarray(_window_sumsquare(n_frames, length))


def _stfts(wave_out, wave_lowpass):
    wave_out = jnp.asarray(wave_out, jnp.float32)
    m = wave_out.shape[-1]
    x = jnp.asarray(wave_lowpass, jnp.float32)
    x = x[:, :m] if x.shape[-1] >= m else jnp.pad(x, ((0, 0), (0, m - x.shape[-1])))
    s_x = stft_librosa(x)  # [B, F, 1025]
    mag_x = jnp.abs(s_x)
    k = cutoff_index(jnp.cumsum(jnp.sum(mag_x, axis=-2), axis=-1))  # [B]
    return s_x, stft_librosa(wave_out), k, m


def stft_cutoff_bin(wave_out: jnp.ndarray, wave_lowpass: jnp.ndarray) -> jnp.ndarray:
    """[B] int32: the STFT bin k (of 1025) below which `replace_low_stft` puts the low-passed input back, for
    outputs ``wave_out`` [B, M] and low-passed inputs ``wave_lowpass`` [B, N] (48 kHz)."""
    return _stfts(wave_out, wave_lowpass)[2]


@jax.jit
def low_band_energy(wave_out: jnp.ndarray, wave_lowpass: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(Σ_t |S_x[k, t]|, Σ_t |S_out[k, t]|), each [B]: the two sides of `replace_low_stft`'s energy ratio at
    the cutoff bin k. Summing them over the windows of one file gives one ratio per file and channel, so
    neighbouring windows of long audio get the same low-band gain."""
    s_x, s_out, k, _ = _stfts(wave_out, wave_lowpass)
    row_x = jnp.take_along_axis(jnp.abs(s_x), k[:, None, None], axis=-1)[..., 0].sum(-1)
    row_out = jnp.take_along_axis(jnp.abs(s_out), k[:, None, None], axis=-1)[..., 0].sum(-1)
    return row_x, row_out


def energy_ratio(row_x, row_out) -> jnp.ndarray:
    """The reference's clamped ratio clip(row_x / row_out, 0.8, 1.2); 0/0 is taken as 1."""
    ratio = jnp.asarray(row_x, jnp.float32) / jnp.asarray(row_out, jnp.float32)
    return jnp.where(jnp.isnan(ratio), 1.0, jnp.clip(ratio, RATIO_MIN, RATIO_MAX))


@jax.jit
def replace_low_stft(wave_out: jnp.ndarray, wave_lowpass: jnp.ndarray, ratio: jnp.ndarray | None = None) -> jnp.ndarray:
    """The reference ``postprocessing``: put the low-passed input back below its cutoff, in the STFT domain.

    Per item: k = 0.985-rule cutoff bin of ``|stft(x)|`` over 1025 bins (x = the low-passed input);
    ``r = clip(sum_t |S_x[k, t]| / sum_t |S_out[k, t]|, 0.8, 1.2)``; ``S_out[:k] = S_x[:k] / r`` (complex,
    so the phase is copied too); ``istft(S_out, length=M)``.

    Lengths: the vocoder output is M = N + 16 samples for an input of N = k * 245 760. The reference
    STFTs x and the output separately and assigns frame-by-frame, which works because
    ``1 + N // 512 == 1 + M // 512`` there (it raises otherwise). Here x is zero-padded / cropped to M
    first; with centred zero-padded frames this gives exactly the reference's frames whenever it runs,
    and a defined result otherwise.

    Args:
      wave_out: [B, M] vocoder output.
      wave_lowpass: [B, N] low-passed, normalised, padded input.
      ratio: optional [B] ratios to use instead of each item's own (see `low_band_energy`).
    Returns:
      float32 [B, M]. (If row k of both STFTs is all zero the ratio is 0/0; it is taken as 1 here, where
      the reference would produce NaN.)
    """
    s_x, s_out, k, m = _stfts(wave_out, wave_lowpass)
    if ratio is None:
        row_x = jnp.take_along_axis(jnp.abs(s_x), k[:, None, None], axis=-1)[..., 0].sum(-1)
        row_out = jnp.take_along_axis(jnp.abs(s_out), k[:, None, None], axis=-1)[..., 0].sum(-1)
        ratio = energy_ratio(row_x, row_out)
    low = jnp.arange(s_out.shape[-1]) < k[:, None, None]
    s_new = jnp.where(low, s_x / jnp.asarray(ratio, jnp.float32)[:, None, None].astype(s_x.dtype), s_out)
    return istft_librosa(s_new, m)


@jax.jit
def normalize_output(w: jnp.ndarray) -> jnp.ndarray:
    """Final output normalisation of ``generate_batch``: ``w = 0.5 * w / max|w|; w -= mean(w)`` along the
    last axis. Args: w [..., M]. Returns: float32 [..., M]; an all-zero row stays zero (the reference
    would divide by zero).
    """
    w = jnp.asarray(w, jnp.float32)
    peak = jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    w = 0.5 * w / jnp.where(peak > 0, peak, 1.0)
    return w - jnp.mean(w, axis=-1, keepdims=True)
