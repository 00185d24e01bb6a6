"""Inference low-pass preparation (reference: ``audiosr/utils.py lowpass_filtering_prepare_inference`` and
``audiosr/lowpass.py``); numpy/scipy on the host.

The model is conditioned on a *low-passed* copy of the (normalised, padded) input, not on the input itself:

1. cutoff detection on the magnitude STFT of the input (``detect_cutoff_hz``, the 0.985 cumulative-energy
   rule over 1024 linear bins, ``k / 1024 * 24000`` Hz);
2. an order-8 elliptic low-pass (0.1 dB ripple, 60 dB stop band; the reference draws the type with
   ``np.random.choice`` right after ``seed_everything(seed)``, which yields ``"ellip"`` for the default
   seed 42, see ``reference_filter_type``) applied as
   ``sosfiltfilt`` -> ``resample_poly`` down to ``int(hi * fs)`` Hz and back up (a hard band limit) ->
   ``sosfiltfilt``, lengths aligned to the input (``lowpass_filter``).

Behaviour below 1 kHz (differs from the reference on purpose): the reference replaces a detected cutoff
below 1000 Hz by 24000 Hz ("give up processing"), which then makes ``scipy.signal.ellip`` raise
``ValueError`` (Wn = 1.0), i.e. near-silent or sub-1-kHz inputs crash. ``prepare_lowpass`` instead clamps
the cutoff to ``MIN_CUTOFF_HZ`` = 1000 Hz, logs a warning and filters there: such an input has >= 98.5 % of
its STFT magnitude below 1 kHz, so the 1 kHz low-pass keeps what it has and the model gets a well-defined
condition. (All-zero input never gets here: ``audio.load_audio`` rejects silent files.)
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
from scipy import signal

from audiosr_jax.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

CUTOFF_PERCENTILE = 0.985
MIN_CUTOFF_HZ = 1000.0
FILTER_ORDER = 8
FILTER_TYPE = "ellip"  # what np.random.choice gives after the reference's seed_everything(42)
REFERENCE_FILTER_CHOICES = ("butter", "cheby1", "ellip", "bessel")


LOWPASS_CHOICES = ("official",) + REFERENCE_FILTER_CHOICES  # the `--lowpass` values


def reference_filter_type(seed: int) -> str:
    """The filter type the reference draws for a given ``--seed``: ``seed_everything(seed)`` then
    ``np.random.choice(["butter", "cheby1", "ellip", "bessel"])`` as the first numpy draw. 42 -> "ellip".
    """
    return str(np.random.RandomState(int(seed)).choice(list(REFERENCE_FILTER_CHOICES)))


def filter_type(lowpass: str, seed: int) -> str:
    """The filter family to condition with: ``"official"`` → the official tool's draw for ``seed``
    (`reference_filter_type`), else the named family (one of ``REFERENCE_FILTER_CHOICES``)."""
    if lowpass == "official":
        return reference_filter_type(seed)
    if lowpass not in REFERENCE_FILTER_CHOICES:
        raise ValueError(f"unknown low-pass family {lowpass!r}; choose from {', '.join(LOWPASS_CHOICES)}")
    return lowpass


def cutoff_index(energy: np.ndarray, percentile: float = CUTOFF_PERCENTILE) -> int:
    """The reference ``_find_cutoff``: the highest index i in [1, F-1] with
    ``energy[i] < percentile * energy[-1]``, else 0.

    Args: energy [F], the cumulative sum over frequency of the per-bin magnitude (non-decreasing).
    """
    energy = np.asarray(energy)
    below = np.flatnonzero(energy[1:] < energy[-1] * percentile)
    return int(below[-1]) + 1 if below.size else 0


def detect_cutoff_hz(stft_mag: np.ndarray, percentile: float = CUTOFF_PERCENTILE) -> float:
    """Cutoff frequency of a signal from its magnitude STFT, as ``_locate_cutoff_freq(stft, 0.985)/1024*24000``.

    Args:
      stft_mag: [T, 1024] magnitude STFT (the ``stft`` output of ``audio.log_mel_spectrogram`` for one item;
        1024 bins, time first). Summed over time, cumulated over frequency, in float64.
    Returns:
      cutoff in Hz, ``k / 1024 * 24000`` with k from :func:`cutoff_index` (0.0 when no bin qualifies).
    """
    mag = np.abs(np.asarray(stft_mag, dtype=np.float64))
    energy = np.cumsum(mag.sum(axis=0))
    return cutoff_index(energy, percentile) / 1024 * 24000


def _design(order: int, hi: float, ftype: str) -> np.ndarray:
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
    sos = _design(order, hi, ftype)
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


def prepare_lowpass(
    wave: np.ndarray, stft_mag: np.ndarray | None = None, ftype: str = FILTER_TYPE
) -> tuple[np.ndarray, float]:
    """The reference ``lowpass_filtering_prepare_inference`` for one channel.

    Args:
      wave: [N] float, 48 kHz, normalised and zero-padded (the output of ``audio.prepare_waveform`` for one
        channel): the reference filters the padded waveform.
      stft_mag: optional [T, 1024] magnitude STFT of ``wave`` (the ``stft`` output of
        ``audio.log_mel_spectrogram``); computed here with ``audio.stft_magnitude`` when omitted.
      ftype: filter type; the reference's default seed 42 gives "ellip", other seeds see
        :func:`reference_filter_type`.
    Returns:
      ``(lowpassed, cutoff_hz)``: float32 [N] low-passed waveform and the cutoff actually used (Hz).
      A detected cutoff below 1000 Hz is clamped to 1000 Hz with a logged warning (the reference crashes
      there, see the module docstring).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"prepare_lowpass expects a 1-D waveform, got shape {wave.shape}")
    if stft_mag is None:
        from audiosr_jax.audio import stft_magnitude

        stft_mag = np.asarray(stft_magnitude(wave[None]))[0, :, :1024]
    cutoff = detect_cutoff_hz(stft_mag)
    if cutoff < MIN_CUTOFF_HZ:
        log.warning(
            "detected input bandwidth %.1f Hz is below %.0f Hz (near-silent or very narrow-band input); "
            "low-passing at %.0f Hz instead",
            cutoff,
            MIN_CUTOFF_HZ,
            MIN_CUTOFF_HZ,
        )
        cutoff = MIN_CUTOFF_HZ
    y = lowpass_filter(wave, cutoff, sr=SAMPLE_RATE, order=FILTER_ORDER, ftype=ftype)
    return y.astype(np.float32), float(cutoff)
