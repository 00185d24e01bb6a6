"""Objective metrics for audio super-resolution (numpy, host; float64 throughout).

Two LSD families are in use in the field and their numbers are **not interchangeable**
(docs/design.md §Metrics):

1. **ssr_eval LSD** (:func:`lsd`) - what AudioSR and NVSR report. Source: ``ssr_eval`` 0.0.7
   (``ssr_eval/metrics.py``, ``AudioMetrics``): ``hop = int(sr/100)``, ``n_fft = int(2048/(44100/sr))``
   (2229 and 480 at 48 kHz), ``librosa.stft`` (periodic Hann, ``center=True``, librosa's zero padding),
   magnitude ``S`` and ``LSD = mean_t sqrt(mean_f log10(S_ref^2 / (S_est + 1e-12)^2 + 1e-12)^2)``:
   log10 of a power ratio, not dB, hence values around 1.
   :func:`lsd_energy_scaled` is the same with the estimate's spectrogram first scaled so that its mean over
   the lowest 10 % of bins matches the reference (AudioSR README 2025-06, ``lsd_calculation_pitfall``).
2. **NU-Wave 2 / AP-BWE LSD** (:func:`lsd_nuwave2`, :func:`lsd_hf`, :func:`lsd_lf`, :func:`lsd_bands`).
   Source: ``nuwave2/for_test.py`` and ``AP-BWE/cal_metrics.py``: ``torch.stft(n_fft=2048, hop=512,
   hann_window(2048), center=True)`` (reflect padding), ``P = log10(clamp(|X|^2, 1e-8))``,
   ``LSD = mean_t sqrt(mean_f (P_est - P_ref)^2)``; LSD-HF over bins ``[hf:]`` (the generated band),
   LSD-LF over ``[:hf]`` (the kept band) with ``hf = int(1025 * sr_in / 48000)``, ``sr_in = 2 * cutoff``.

Also :func:`si_sdr` (``alpha = <est,ref>/||ref||^2``, ``10 log10(||alpha ref||^2 / ||alpha ref - est||^2)``,
docs/design.md §SI-SDR and SNR) and :func:`snr` (AP-BWE / NU-Wave 2: ``20 log10(||ref|| / ||est - ref||)``).

Conventions shared by every metric here:

* ``ref`` and ``est`` are ``[N]`` or ``[C, N]`` waveforms (same C) at ``sr`` Hz. Multi-channel signals are
  scored per channel and the channel values averaged.
* Length mismatch: both are trimmed at the end to the shorter length (as ssr_eval and AP-BWE do; ssr_eval
  additionally asserts a difference under 100 samples, which is left to the caller, see ``evaluate.py``).
* Silence: a channel whose reference is all zeros has no defined score and is skipped; if every reference
  channel is silent, :class:`MetricError` is raised. A silent *estimate* gets finite values: large LSDs,
  SI-SDR at its floor ``-DB_LIMIT``, SNR 0 dB. Decibel metrics are clipped to ``[-DB_LIMIT, DB_LIMIT]`` (100 dB)
  so identical signals give +100 dB instead of infinity. No metric returns NaN or inf.
* Signals shorter than the STFT size (2229 / 2048 samples at 48 kHz) raise :class:`MetricError`; non-finite
  samples too.
* The STFTs are computed in blocks of frames, so memory stays bounded for hour-long files (LSD is a mean over
  frames, so blocking changes nothing).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "MetricError",
    "DB_LIMIT",
    "ssr_eval_stft_params",
    "band_split_index",
    "stft_magnitude",
    "lsd",
    "lsd_energy_scaled",
    "lsd_nuwave2",
    "lsd_bands",
    "lsd_hf",
    "lsd_lf",
    "si_sdr",
    "snr",
]

SSR_EVAL_EPS = 1e-12  # ssr_eval/metrics.py EPS
NUWAVE_POWER_FLOOR = 1e-8  # nuwave2 for_test.py: |X|^2 clamped at 1e-8
NUWAVE_N_FFT = 2048
NUWAVE_HOP = 512
DB_LIMIT = 100.0  # SI-SDR / SNR are clipped to +-100 dB
_BLOCK_FRAMES = 1024  # frames per STFT block (memory ~ 1024 x 2229 x 16 bytes)


class MetricError(ValueError):
    """A metric is undefined for these signals (silent reference, too short, non-finite samples, ...)."""


# ----------------------------------------------------------------------------------------------------------
# STFT
# ----------------------------------------------------------------------------------------------------------


def ssr_eval_stft_params(sr: int) -> tuple[int, int]:
    """``(n_fft, hop)`` of ssr_eval ``AudioMetrics(rate=sr)``: ``int(2048 / (44100 / sr))``, ``int(sr / 100)``.

    48000 -> (2229, 480); 44100 -> (2048, 441). The float expression is kept as ssr_eval writes it.
    """
    return int(2048 / (44100 / sr)), int(sr / 100)


def band_split_index(cutoff_hz: float, sr: int = 48000, n_fft: int = NUWAVE_N_FFT) -> int:
    """First bin of the generated band, NU-Wave 2's ``hf = int(1025 * sr_in / 48000)`` with ``sr_in = 2 *
    cutoff_hz``, written for any rate as ``int((n_fft // 2 + 1) * 2 * cutoff_hz / sr)``.

    Bins ``[:hf]`` are the kept band (LSD-LF), ``[hf:]`` the generated band (LSD-HF).
    """
    return int((n_fft // 2 + 1) * (2.0 * float(cutoff_hz)) / sr)


@functools.lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    # periodic Hann, as librosa ("hann", fftbins=True) and torch.hann_window(n); also for odd n
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.flags.writeable = False
    return w


def _stft_blocks(x: np.ndarray, n_fft: int, hop: int, pad_mode: str):
    """Yield ``|STFT|`` blocks ``[B, n_fft // 2 + 1]`` (float64) of a 1-D signal, frames in order.

    ``center=True``: ``n_fft // 2`` samples of padding each side (``"constant"`` zeros as librosa >= 0.9,
    ``"reflect"`` as torch.stft), periodic Hann of length ``n_fft``, ``1 + (N + 2*(n_fft//2) - n_fft) // hop``
    frames.
    """
    pad = n_fft // 2
    if pad_mode == "reflect":
        xp = np.pad(x, pad, mode="reflect")
    elif pad_mode == "constant":
        xp = np.pad(x, pad)
    else:
        raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
    frames = sliding_window_view(xp, n_fft)[::hop]  # a view, no copy
    win = _hann(n_fft)
    for start in range(0, frames.shape[0], _BLOCK_FRAMES):
        yield np.abs(np.fft.rfft(frames[start : start + _BLOCK_FRAMES] * win, axis=-1))


def stft_magnitude(x: np.ndarray, n_fft: int, hop: int, pad_mode: str = "constant") -> np.ndarray:
    """Magnitude STFT of a 1-D signal, time first.

    Args:
      x: [N] waveform.
      n_fft, hop: window (= FFT) length and hop in samples; periodic Hann window, ``center=True``.
      pad_mode: "constant" (librosa >= 0.9 default) or "reflect" (torch.stft default).
    Returns:
      float64 [T, n_fft // 2 + 1] with ``T = 1 + (N + 2 * (n_fft // 2) - n_fft) // hop``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"stft_magnitude expects a 1-D signal, got shape {x.shape}")
    return np.concatenate(list(_stft_blocks(x, n_fft, hop, pad_mode)), axis=0)


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------


def _pairs(ref, est, min_len: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """float64 ``(ref_row, est_row)`` per scored channel: trimmed to the shorter length, channels whose
    reference is all zeros dropped. Raises MetricError when nothing can be scored."""
    r = np.asarray(ref, dtype=np.float64)
    e = np.asarray(est, dtype=np.float64)
    if r.ndim not in (1, 2) or e.ndim != r.ndim or (r.ndim == 2 and r.shape[0] != e.shape[0]):
        raise MetricError(f"reference {r.shape} and estimate {e.shape} must both be [N] or [C, N] with one C")
    r, e = np.atleast_2d(r), np.atleast_2d(e)
    n = min(r.shape[-1], e.shape[-1])
    if n < min_len:
        raise MetricError(f"signals too short: {n} samples, at least {min_len} needed")
    r, e = r[:, :n], e[:, :n]
    if not np.all(np.isfinite(r)):
        raise MetricError("reference contains NaN or infinite samples")
    if not np.all(np.isfinite(e)):
        raise MetricError("estimate contains NaN or infinite samples")
    rows = [(r[c], e[c]) for c in range(r.shape[0]) if np.any(r[c])]
    if not rows:
        raise MetricError("reference is silent (all samples zero)")
    return rows


def _lockstep(r: np.ndarray, e: np.ndarray, n_fft: int, hop: int, pad_mode: str):
    return zip(_stft_blocks(r, n_fft, hop, pad_mode), _stft_blocks(e, n_fft, hop, pad_mode))


# ----------------------------------------------------------------------------------------------------------
# family 1: ssr_eval (AudioSR / NVSR)
# ----------------------------------------------------------------------------------------------------------


def _ssr_frame_lsd(s_ref: np.ndarray, s_est: np.ndarray) -> np.ndarray:
    # ssr_eval AudioMetrics.lsd: log10(target^2 / (est + EPS)^2 + EPS)^2, mean over F, sqrt -> [B]
    d = np.log10(s_ref**2 / (s_est + SSR_EVAL_EPS) ** 2 + SSR_EVAL_EPS)
    return np.sqrt(np.mean(d * d, axis=-1))


def lsd(ref, est, sr: int = 48000, *, pad_mode: str = "constant") -> float:
    """Log-spectral distance as AudioSR / NVSR report it (``ssr_eval`` 0.0.7 ``AudioMetrics.lsd``).

    ``mean_t sqrt(mean_f log10(S_ref^2 / (S_est + 1e-12)^2 + 1e-12)^2)`` on ``|librosa.stft|`` with
    ``n_fft = int(2048 / (44100 / sr))``, ``hop = int(sr / 100)`` (2229 / 480 at 48 kHz), periodic Hann,
    ``center=True``. Lower is better; 0 for identical signals; a 6 dB level difference gives 0.6.

    Args:
      ref, est: [N] or [C, N] waveforms at ``sr`` Hz (reference = ground truth, est = model output).
      sr: sample rate in Hz (sets the STFT as ssr_eval does; AudioSR evaluates at 48000).
      pad_mode: "constant" = librosa >= 0.9 (AudioSR pins librosa 0.9.2); "reflect" = librosa <= 0.8.
    Returns:
      LSD (log10 power-ratio units), averaged over frames, then over channels.
    Raises:
      MetricError: silent reference, fewer than ``n_fft`` samples, non-finite samples, shape mismatch.
    """
    n_fft, hop = ssr_eval_stft_params(sr)
    vals = []
    for r, e in _pairs(ref, est, min_len=n_fft):
        per_frame = np.concatenate([_ssr_frame_lsd(a, b) for a, b in _lockstep(r, e, n_fft, hop, pad_mode)])
        vals.append(per_frame.mean())
    return float(np.mean(vals))


def lsd_energy_scaled(ref, est, sr: int = 48000, *, low_fraction: float = 0.1, pad_mode: str = "constant") -> float:
    """ssr_eval LSD after matching the estimate's level in the lowest bins (AudioSR README 2025-06,
    ``example/lsd_calculation_pitfall``; docs/design.md §Energy-scaled LSD).

    The estimate's magnitude spectrogram is multiplied by ``mean(S_ref[:, :k]) / mean(S_est[:, :k])`` with
    ``k = int(F * low_fraction)`` (means over all frames; factor 1 when the estimate's low band is zero), then
    :func:`lsd`'s formula is applied. This removes the penalty of AudioSR's forced 0.5-peak output level
    (issue #64). Deviation from the demo: the demo used n_fft 2048 / hop 512 at 22.05 kHz and eps 1e-8; here
    the STFT and eps are ssr_eval's (as :func:`lsd`) so the two numbers differ only by the scaling.

    Args / Returns / Raises: as :func:`lsd`.
    """
    n_fft, hop = ssr_eval_stft_params(sr)
    k = int((n_fft // 2 + 1) * low_fraction)
    vals = []
    for r, e in _pairs(ref, est, min_len=n_fft):
        if k > 0:
            sum_r = sum_e = 0.0
            count = 0
            for a, b in _lockstep(r, e, n_fft, hop, pad_mode):
                sum_r += a[:, :k].sum()
                sum_e += b[:, :k].sum()
                count += a.shape[0] * k
            scale = (sum_r / count) / (sum_e / count) if sum_e > 0 else 1.0
        else:
            scale = 1.0
        per_frame = np.concatenate(
            [_ssr_frame_lsd(a, b * scale) for a, b in _lockstep(r, e, n_fft, hop, pad_mode)]
        )
        vals.append(per_frame.mean())
    return float(np.mean(vals))


# ----------------------------------------------------------------------------------------------------------
# family 2: NU-Wave 2 / AP-BWE / FLowHigh (n_fft 2048, hop 512) with the HF / LF split
# ----------------------------------------------------------------------------------------------------------


def _nuwave_logpow(s: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(s * s, NUWAVE_POWER_FLOOR))


def lsd_bands(ref, est, cutoff_hz: float | None = None, sr: int = 48000, *,
              max_hz: float | None = None) -> dict[str, float]:
    """NU-Wave 2 LSD on the full band and, given a cutoff, on the generated and kept bands, in one pass.

    ``P = log10(max(|X|^2, 1e-8))`` with ``|X|`` = ``torch.stft(n_fft=2048, hop=512, hann_window(2048),
    center=True)`` (reflect padding); ``LSD = mean_t sqrt(mean_f (P_est - P_ref)^2)`` over all bins,
    bins ``[hf:]`` (LSD-HF) and ``[:hf]`` (LSD-LF), ``hf = band_split_index(cutoff_hz, sr)`` (NU-Wave 2
    ``for_test.py``; also AP-BWE ``cal_metrics.py`` for the full band, FLowHigh, UniverSR).

    Args:
      ref, est: [N] or [C, N] waveforms at ``sr`` Hz.
      cutoff_hz: bandwidth of the low-resolution input in Hz, or None for the full band only.
      sr: sample rate (the split formula scales with it; the STFT size stays 2048 / 512 as published).
      max_hz: the reference's own bandwidth (Hz) when it is narrower than ``sr / 2``: bins from
        ``band_split_index(max_hz)`` up are left out of every band (a reference with no content there is
        no target); None (the published metric) keeps every bin.
    Returns:
      ``{"lsd": ...}`` plus ``"lsd_hf"`` and ``"lsd_lf"`` when ``cutoff_hz`` is given (channel means);
      ``"lsd_hf"`` is absent when ``max_hz`` leaves the generated band empty.
    Raises:
      MetricError: as :func:`lsd` (at least 2048 samples), and when the cutoff leaves either band empty
      (``hf`` not in ``[1, 1024]``, e.g. a cutoff at or above ``sr / 2``).
    """
    n_bins = NUWAVE_N_FFT // 2 + 1
    hf = None
    if cutoff_hz is not None:
        hf = band_split_index(cutoff_hz, sr)
        if not 0 < hf < n_bins:
            raise MetricError(
                f"cutoff {float(cutoff_hz):.0f} Hz leaves an empty band at {sr} Hz (split bin {hf} of {n_bins})"
            )
    top = n_bins if max_hz is None else min(n_bins, max(1, band_split_index(max_hz, sr)))
    out: dict[str, list[float]] = {"lsd": []}
    if hf is not None:
        out["lsd_lf"] = []
        if hf < top:
            out["lsd_hf"] = []
    for r, e in _pairs(ref, est, min_len=NUWAVE_N_FFT):
        full, high, low = [], [], []
        for a, b in _lockstep(r, e, NUWAVE_N_FFT, NUWAVE_HOP, "reflect"):
            d2 = ((_nuwave_logpow(b) - _nuwave_logpow(a)) ** 2)[:, :top]
            full.append(np.sqrt(d2.mean(axis=-1)))
            if hf is not None:
                high.append(np.sqrt(d2[:, hf:].mean(axis=-1)) if hf < top else None)
                low.append(np.sqrt(d2[:, :hf].mean(axis=-1)))
        out["lsd"].append(np.concatenate(full).mean())
        if "lsd_hf" in out:
            out["lsd_hf"].append(np.concatenate(high).mean())
        if hf is not None:
            out["lsd_lf"].append(np.concatenate(low).mean())
    return {k: float(np.mean(v)) for k, v in out.items()}


def lsd_nuwave2(ref, est, sr: int = 48000) -> float:
    """Full-band NU-Wave 2 / AP-BWE LSD (n_fft 2048, hop 512, ``log10(max(|X|^2, 1e-8))``); see
    :func:`lsd_bands`. Not comparable with :func:`lsd` (ssr_eval) numbers."""
    return lsd_bands(ref, est, None, sr)["lsd"]


def lsd_hf(ref, est, cutoff_hz: float, sr: int = 48000) -> float:
    """LSD-HF: NU-Wave 2 LSD over the generated band, bins ``[hf:]`` above the input's cutoff (Hz);
    see :func:`lsd_bands`."""
    return lsd_bands(ref, est, cutoff_hz, sr)["lsd_hf"]


def lsd_lf(ref, est, cutoff_hz: float, sr: int = 48000) -> float:
    """LSD-LF: NU-Wave 2 LSD over the kept band, bins ``[:hf]`` below the input's cutoff (Hz);
    see :func:`lsd_bands`."""
    return lsd_bands(ref, est, cutoff_hz, sr)["lsd_lf"]


# ----------------------------------------------------------------------------------------------------------
# waveform metrics
# ----------------------------------------------------------------------------------------------------------


def _db_ratio(num: float, den: float) -> float:
    # 10 log10(num / den), clipped to +-DB_LIMIT (num = 0: nothing of the reference left, e.g. a silent
    # estimate, checked first; den = 0: perfect)
    if num <= 0.0:
        return -DB_LIMIT
    if den <= 0.0:
        return DB_LIMIT
    return float(np.clip(10.0 * np.log10(num / den), -DB_LIMIT, DB_LIMIT))


def si_sdr(ref, est, *, zero_mean: bool = False) -> float:
    """Scale-invariant SDR in dB (docs/design.md §SI-SDR and SNR): ``alpha = <est, ref> / ||ref||^2``,
    ``10 log10(||alpha ref||^2 / ||alpha ref - est||^2)``. Invariant to the estimate's gain (any non-zero
    factor). Higher is better; rarely meaningful for generative bandwidth extension (phase is not kept).

    Args:
      ref, est: [N] or [C, N] waveforms (any rate, the same for both).
      zero_mean: remove each signal's mean first (Le Roux et al. 2019); off by default, as
        docs/design.md §SI-SDR and SNR writes it.
    Returns:
      dB, clipped to ``[-DB_LIMIT, DB_LIMIT]``: identical signals give +100, a silent estimate -100.
    Raises:
      MetricError: silent reference (after mean removal when ``zero_mean``), non-finite samples, shapes.
    """
    vals = []
    for r, e in _pairs(ref, est):
        if zero_mean:
            r, e = r - r.mean(), e - e.mean()
            if not np.any(r):
                continue
        alpha = np.dot(e, r) / np.dot(r, r)
        target = alpha * r
        noise = target - e
        vals.append(_db_ratio(float(np.dot(target, target)), float(np.dot(noise, noise))))
    if not vals:
        raise MetricError("reference is silent after mean removal")
    return float(np.mean(vals))


def snr(ref, est) -> float:
    """SNR in dB as NU-Wave 2 / AP-BWE: ``20 log10(||ref|| / ||est - ref||)`` (not scale invariant),
    clipped to ``[-DB_LIMIT, DB_LIMIT]``. Args / Raises as :func:`si_sdr`."""
    vals = []
    for r, e in _pairs(ref, est):
        d = e - r
        vals.append(_db_ratio(float(np.dot(r, r)), float(np.dot(d, d))))
    return float(np.mean(vals))
