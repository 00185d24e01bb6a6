"""The reference's low-pass filter chain (``audiosr/lowpass.py``), numpy/scipy on the host: a leaf module,
shared by inference (the condition, `inference.lowpass`) and training (the degradations, `degrade`).

``lowpass_filter``: design → ``sosfiltfilt`` → ``resample_poly`` down to ``int(hi * fs)`` Hz and back up
(a hard band limit) → ``sosfiltfilt``, lengths aligned to the input.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import signal

from audiosr_jax.audio import SAMPLE_RATE

__all__ = ["FILTER_ORDER", "FILTER_TYPE", "REFERENCE_FILTER_CHOICES", "design", "lowpass_filter"]

FILTER_ORDER = 8
FILTER_TYPE = "ellip"  # what np.random.choice gives after the reference's seed_everything(42)
REFERENCE_FILTER_CHOICES = ("butter", "cheby1", "ellip", "bessel")


def design(order: int, hi: float, ftype: str) -> np.ndarray:
    """Second-order sections of an order-`order` low-pass at `hi` (fraction of Nyquist), as the reference
    designs each family (ellip: 0.1 dB ripple, 60 dB stop band; cheby1 0.1 dB; cheby2 60 dB)."""
    if ftype == "butter":
        return signal.butter(order, hi, btype="low", output="sos")
    if ftype == "cheby1":
        return signal.cheby1(order, 0.1, hi, btype="low", output="sos")
    if ftype == "cheby2":
        return signal.cheby2(order, 60, hi, btype="low", output="sos")
    if ftype == "ellip":
        return signal.ellip(order, 0.1, 60, hi, btype="low", output="sos")
    if ftype == "bessel":
        return signal.bessel(order, hi, btype="low", output="sos")
    raise ValueError(f"unsupported low-pass filter type {ftype!r}")


def _align(y: np.ndarray, length: int) -> np.ndarray:
    # the reference align_length: crop, or zero-pad at the end
    n = y.shape[-1]
    if n == length:
        return y
    if n > length:
        return y[..., :length]
    return np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, length - n)])


@functools.lru_cache(maxsize=None)
def _resample_fir(max_rate: int) -> np.ndarray:
    # resample_poly's default anti-aliasing filter, firwin(20·max_rate + 1, 1/max_rate, ("kaiser", 5.0)),
    # float64, read-only. After the gcd reduction it depends on the rates only through max(up, down), which
    # for fs_down <-> sr is sr / gcd(fs_down, sr) in *both* directions: at most one filter per divisor of sr
    # (64 for 48 kHz, ~25 MB all together), whereas designing it is most of the host path's time.
    h = signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    h.flags.writeable = False
    return h


def _resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``signal.resample_poly(x, up, down, axis=-1)`` (default Kaiser window), bit-identical, with the FIR
    taken from :func:`_resample_fir` instead of designed on every call."""
    g = math.gcd(int(up), int(down))
    up, down = int(up) // g, int(down) // g
    if up == down == 1 or not np.issubdtype(x.dtype, np.inexact):
        return signal.resample_poly(x, up, down, axis=-1)
    # resample_poly casts the designed filter to x's dtype and copies a given one before scaling it by up
    h = _resample_fir(max(up, down)).astype(x.dtype, copy=False)
    return signal.resample_poly(x, up, down, axis=-1, window=h)


def lowpass_filter(
    x: np.ndarray, cutoff_hz: float, sr: int = SAMPLE_RATE, order: int = FILTER_ORDER, ftype: str = FILTER_TYPE
) -> np.ndarray:
    """The reference ``lowpass(data, highcut, fs, order, _type)`` chain along the last axis.

    ``highcut = int(cutoff_hz)``, ``hi = highcut / (sr/2)``, order clamped to [2, 10]; design (``ellip``:
    0.1 dB ripple, 60 dB stop band; also butter / cheby1 / cheby2 / bessel as the reference), then
    ``sosfiltfilt`` -> ``resample_poly(up=int(hi*sr), down=sr)`` and back -> ``sosfiltfilt``, each step's
    length aligned to the input (crop or zero-pad at the end). The input is passed to scipy in its own
    float dtype, as the reference does (scipy then computes in float64).

    Args:
      x: [..., N] waveform at ``sr`` Hz.
      cutoff_hz: must satisfy 1 <= int(cutoff_hz) < sr/2 (else ValueError, a programming error).
    Returns:
      float64 [..., N].
    """
    highcut = int(cutoff_hz)
    nyq = 0.5 * sr
    hi = highcut / nyq
    if not 0.0 < hi < 1.0:
        raise ValueError(f"low-pass cutoff {cutoff_hz} Hz outside (0, {nyq}) Hz")
    order = int(min(max(order, 2), 10))
    sos = design(order, hi, ftype)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    n = x.shape[-1]
    y = _align(signal.sosfiltfilt(sos, x, axis=-1), n)
    # stft_hard_lowpass: the float expression int(hi * fs) is kept as is (it can round down by one Hz)
    fs_down = int(hi * sr)
    y_band = _resample_poly(y, fs_down, sr)
    y = _align(_resample_poly(y_band, sr, fs_down), n)
    return _align(signal.sosfiltfilt(sos, y, axis=-1), n)
