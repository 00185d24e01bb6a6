"""The 60 dB bandwidth rule: the highest frequency whose smoothed mean spectrum is within 60 dB of its peak.

One implementation for the corpus builder (``data/build_corpus.py`` gates and records clips with it) and the
dataset builder (``audiosr_jax.data.segments`` stores it per example for the LDM's loss mask) and the
evaluation (a narrow reference is scored within its own band, ``evaluation.scoring``).
"""

from __future__ import annotations

import numpy as np

_FRAMES_PER_CHUNK = 256  # frames transformed at once: memory stays ~ 256 x n_fft floats for any file length


def measure_bandwidth(x: np.ndarray, sr: int, floor_db: float = 60.0, n_fft: int = 4096,
                      smooth_bins: int = 9) -> float:
    """Effective bandwidth in Hz: the highest frequency whose smoothed spectrum is within ``floor_db`` of its peak.

    Args:
        x: mono signal, shape (T,) (or (T, C), mixed to mono), any float scale.
        sr: sample rate in Hz.
        floor_db: how far below the spectral peak still counts as content.
        n_fft: Hann window / FFT length (hop n_fft // 2); shorter signals are zero-padded to one frame.
        smooth_bins: moving-average width (bins) applied to the mean power spectrum before the search.
    Returns:
        Frequency in Hz (0.0 for a silent signal).
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    hop = n_fft // 2
    n_frames = 1 + (x.size - n_fft) // hop
    window = np.hanning(n_fft)
    total = np.zeros(n_fft // 2 + 1)
    for first in range(0, n_frames, _FRAMES_PER_CHUNK):
        starts = hop * np.arange(first, min(first + _FRAMES_PER_CHUNK, n_frames))
        frames = x[starts[:, None] + np.arange(n_fft)[None, :]]
        total += (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).sum(axis=0)
    power = np.convolve(total / n_frames, np.ones(smooth_bins) / smooth_bins, mode="same")
    peak = power.max()
    if peak <= 0:
        return 0.0
    above = np.nonzero(power >= peak * 10 ** (-floor_db / 10))[0]
    return float(above[-1] * sr / n_fft)
