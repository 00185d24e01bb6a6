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

import logging

import numpy as np

from audiosr_jax.audio import SAMPLE_RATE
from audiosr_jax.filters import FILTER_ORDER, FILTER_TYPE, REFERENCE_FILTER_CHOICES, lowpass_filter

log = logging.getLogger(__name__)

CUTOFF_PERCENTILE = 0.985
MIN_CUTOFF_HZ = 1000.0


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
