"""Long audio as fixed-length windows: plan, cut, cross-fade back, and measure the seams (pure numpy).

The model works on multiples of 5.12 s (``SEGMENT`` = 245,760 samples at 48 kHz) and was trained on 10.24 s
crops. Batch inference cuts every file × channel into windows of one of two lengths ("buckets"), so a folder
of mixed lengths compiles two programs:

* ``n <= max_window`` (default 10.24 s): **one** window of ``n`` rounded up to a multiple of ``SEGMENT``
  (5.12 s or 10.24 s), zero-padded at the end. This is exactly the one-file path (``audio.pad_to_segments``),
  so short files behave as before.
* longer: ``k = ceil((n - overlap) / (max_window - overlap))`` windows of ``max_window``, the first at 0 and
  **the last aligned to the end** (start ``n - max_window``), the others evenly spaced in between. Every window
  is full of real audio (no padding the model has to hallucinate over) and every overlap is at least
  ``overlap``; for the same ``k`` as a padded layout, the spare room goes into longer overlaps for free.

Cross-fade. Each pair of neighbours is blended over ``fade`` samples (default: the whole nominal overlap,
1.28 s) centred in their overlap, with a raised-cosine (sin²/cos²) **amplitude-complementary** pair
(w_i + w_{i+1} = 1): every sample of the output is a convex combination of the windows, so a constant stays
constant and unmodified windows reproduce the signal exactly. Amplitude- rather than power-complementary
because the two windows agree below the input's cutoff (that band is copied from the same low-passed input
in both), and that band carries most of the energy: a power-complementary (sin/cos) pair would boost it by up
to +3 dB at the middle of every seam. The price is that content that is *uncorrelated* between the two runs
(the generated high band, drawn with independent noise) would dip by up to 3 dB at the seam centre (measured:
-2.9 dB). So ``overlap_add`` by default compensates per frequency: it measures the correlation rho of the
two windows over the fade and scales the cross-fade by 1/sqrt((1-r)² + r² + 2·rho·r(1-r)), which is 1 where
the windows agree (rho = 1: exact reconstruction and constant sum are kept) and makes the fade
power-complementary where they are independent (measured dip after it: -0.1 dB). Centring a fade shorter
than the actual overlap keeps it away from the window edges, where the model sees the least context.

Default overlap 1.28 s (61,440 samples = 128 mel frames = 16 latent frames), fade = overlap: with 10.24 s
windows a long file costs 10.24 / 8.96 = 1.14× the compute of no overlap (2.56 s would cost 1.33×). In
``benchmarks/seams.py`` a hard cut between windows whose high bands differ by ±6 dB is visible in the seam
flux (90th-percentile ratio 1.75), a 10 ms fade halves it (1.40), and fades of 0.16 s and longer leave seam
frames indistinguishable from the rest (1.00); beyond that the fade length only sets how slowly the timbre
moves from one run to the next, and 1.28 s buys that and model context at the window edges for 14 % compute.

``seam_flux`` measures seams: the spectral flux of the log-magnitude STFT at the frames spanning each
cross-fade versus all other frames.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

__all__ = [
    "SEGMENT",
    "DEFAULT_MAX_WINDOW",
    "DEFAULT_OVERLAP",
    "WindowPlan",
    "bucket_length",
    "plan_windows",
    "cut_windows",
    "window_weights",
    "overlap_add",
    "seam_flux",
]

SEGMENT = 245_760  # 5.12 s at 48 kHz: the model's length quantum (512 mel frames, 64 latent frames)
DEFAULT_MAX_WINDOW = 2 * SEGMENT  # 10.24 s: the training crop length
DEFAULT_OVERLAP = SEGMENT // 4  # 1.28 s = 61,440 samples (a whole number of mel and latent frames)


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """How one signal of ``n`` samples is cut into windows.

    Attributes:
      n: signal length (samples).
      window: window length (samples), a multiple of ``SEGMENT``.
      hop: nominal hop (samples) = window - overlap; the actual spacing of ``starts`` is at most ``hop``
        (windows are evenly spaced with the last one aligned to the end). For one window, ``hop == window``.
      starts: start sample of each window, ascending; the first is 0.
      fade: cross-fade length (samples) at each seam, centred in the overlap of the two windows (0 = hard cut
        at the middle of the overlap).
    """

    n: int
    window: int
    hop: int
    starts: tuple[int, ...]
    fade: int = 0

    def __post_init__(self):
        s = self.starts
        if self.n < 1 or self.window < 1 or self.window % SEGMENT:
            raise ValueError(f"bad plan: n={self.n}, window={self.window} (must be a positive multiple of {SEGMENT})")
        if not s or s[0] != 0 or any(b <= a for a, b in zip(s, s[1:])):
            raise ValueError(f"bad plan: starts {s} must begin at 0 and increase")
        if s[-1] + self.window < self.n:
            raise ValueError(f"bad plan: windows end at {s[-1] + self.window}, before n={self.n}")
        if len(s) > 1:
            if s[-1] + self.window != self.n:
                raise ValueError("bad plan: with several windows the last one must end at n")
            if self.fade < 0 or self.fade > min(self.window - (b - a) for a, b in zip(s, s[1:])):
                raise ValueError(f"bad plan: fade {self.fade} longer than the smallest overlap")
            regions = self.seams
            if any(r0[1] > r1[0] for r0, r1 in zip(regions, regions[1:])):
                raise ValueError("bad plan: neighbouring cross-fades overlap (windows too dense for this fade)")

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    @property
    def seams(self) -> tuple[tuple[int, int], ...]:
        """The cross-fade region ``[start, stop)`` (samples) between each pair of neighbouring windows.

        ``stop - start == fade``; for ``fade == 0`` the region is empty and window i+1 takes over at ``start``.
        """
        w, f = self.window, self.fade
        return tuple(((a + w + b - f) // 2, (a + w + b - f) // 2 + f) for a, b in zip(self.starts, self.starts[1:]))


def _check_lengths(n, max_window) -> tuple[int, int]:
    if int(n) != n or n < 1:
        raise ValueError(f"signal length must be a positive whole number of samples, got {n}")
    if int(max_window) != max_window or max_window < SEGMENT or max_window % SEGMENT:
        raise ValueError(f"max_window must be a positive multiple of {SEGMENT} samples, got {max_window}")
    return int(n), int(max_window)


def bucket_length(n: int, max_window: int = DEFAULT_MAX_WINDOW) -> int:
    """The window length (samples) a signal of ``n`` samples uses: ``n`` rounded up to a multiple of
    ``SEGMENT``, capped at ``max_window``. With the default, always ``SEGMENT`` or ``2 * SEGMENT``."""
    n, max_window = _check_lengths(n, max_window)
    return min(-(-n // SEGMENT) * SEGMENT, max_window)


def plan_windows(n: int, max_window: int = DEFAULT_MAX_WINDOW, overlap: int = DEFAULT_OVERLAP,
                 fade: int | None = None) -> WindowPlan:
    """Plan the windows for one signal of ``n`` samples (see the module docstring).

    Args:
      n: signal length in samples (>= 1).
      max_window: longest window (samples), a multiple of ``SEGMENT``; default 10.24 s.
      overlap: minimum overlap (samples) of neighbouring windows when ``n > max_window``;
        ``0 <= overlap <= max_window // 3`` (so that the cross-fades of a window's two ends never meet).
      fade: cross-fade length (samples), ``0 <= fade <= overlap``; default ``overlap``.
    Returns:
      a WindowPlan. One window of ``bucket_length(n)`` when ``n <= max_window``; else windows of
      ``max_window``, the last ending exactly at ``n``.
    """
    n, max_window = _check_lengths(n, max_window)
    overlap = int(overlap)
    fade = overlap if fade is None else int(fade)
    if not 0 <= overlap <= max_window // 3:
        raise ValueError(
            f"overlap must be in [0, {max_window // 3}] samples for max_window={max_window}, got {overlap}")
    if not 0 <= fade <= overlap:
        raise ValueError(f"fade must be in [0, overlap={overlap}] samples, got {fade}")
    if n <= max_window:
        w = bucket_length(n, max_window)
        return WindowPlan(n=n, window=w, hop=w, starts=(0,), fade=0)
    hop = max_window - overlap
    k = 1 + math.ceil((n - max_window) / hop)
    span = n - max_window  # last start; the spacing span / (k - 1) <= hop
    starts = tuple(i * span // (k - 1) for i in range(k))
    return WindowPlan(n=n, window=max_window, hop=hop, starts=starts, fade=fade)


def cut_windows(x: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """Cut a signal into the plan's windows.

    Args:
      x: [..., L] signal. Usually L == plan.n; samples past ``plan.n`` are used when present (e.g. the
        one-file path's zero padding, or a low-pass filter's tail over it), and anything past L reads as 0.
    Returns:
      [..., num_windows, window], same dtype: ``out[..., i, :] = x[..., s_i : s_i + window]``.
    """
    x = np.asarray(x)
    need = plan.starts[-1] + plan.window
    if x.shape[-1] < need:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, need - x.shape[-1])])
    return np.stack([x[..., s : s + plan.window] for s in plan.starts], axis=-2)


def _ramp(f: int, dtype) -> np.ndarray:
    # rising half of a raised cosine, sampled at bin centres so that r[t] + r[f - 1 - t] == 1 exactly in value
    # (sin² + cos² = 1) and no sample inside the fade has weight 0 or 1
    t = (np.arange(f, dtype=np.float64) + 0.5) / f
    return (np.sin(0.5 * np.pi * t) ** 2).astype(dtype)


def _weights(plan: WindowPlan, i: int, dtype=np.float64) -> np.ndarray:
    """Cross-fade weight of window i over its own samples: [window]."""
    w = np.ones(plan.window, dtype)
    s = plan.starts[i]
    seams = plan.seams
    ramp = _ramp(plan.fade, dtype)
    if i > 0:  # fade in over the seam with the previous window; nothing before it
        a, b = (v - s for v in seams[i - 1])
        w[:a] = 0
        w[a:b] = ramp
    if i < plan.num_windows - 1:  # fade out over the seam with the next window; nothing after it
        a, b = (v - s for v in seams[i])
        w[a:b] = 1 - ramp
        w[b:] = 0
    return w


def window_weights(plan: WindowPlan, dtype=np.float32) -> np.ndarray:
    """The cross-fade weights ``overlap_add`` applies: [num_windows, window]; placed at ``starts`` they sum
    to 1 at every sample of [0, n). One window: all ones."""
    return np.stack([_weights(plan, i, dtype) for i in range(plan.num_windows)])


def overlap_add(windows: np.ndarray, plan: WindowPlan, compensate: bool = True) -> np.ndarray:
    """Cross-fade processed windows back into one signal.

    Args:
      windows: [..., num_windows, window] (e.g. the model outputs, cropped to ``plan.window``).
      compensate: (default) also undo the level dip that the amplitude-complementary fade leaves where the
        two windows are *uncorrelated*, per frequency (see :func:`_compensate_seam`). Where the windows
        agree it changes nothing: unmodified windows still reproduce the signal and a constant stays
        constant. Seams with ``fade < 2048`` samples are left plain. False: the plain cross-fade.
    Returns:
      [..., n] in the windows' floating dtype (float32 for integer input): ``sum_i w_i · windows_i`` placed at
      ``starts``, with the amplitude-complementary raised-cosine weights of :func:`window_weights` (then the
      compensation, if on). One window: its first n samples.
    """
    windows = np.asarray(windows)
    if windows.shape[-2:] != (plan.num_windows, plan.window):
        raise ValueError(f"overlap_add: expected [..., {plan.num_windows}, {plan.window}] windows for this plan, "
                         f"got shape {windows.shape}")
    dtype = np.result_type(windows.dtype, np.float32)
    if plan.num_windows == 1:
        return windows[..., 0, : plan.n].astype(dtype)
    out = np.zeros((*windows.shape[:-2], plan.n), dtype)
    for i, s in enumerate(plan.starts):
        out[..., s : s + plan.window] += _weights(plan, i, dtype) * windows[..., i, :]
    if compensate and plan.fade >= _COMP_FFT:
        for i, (a, b) in enumerate(plan.seams):
            x1 = windows[..., i, a - plan.starts[i] : b - plan.starts[i]]
            x2 = windows[..., i + 1, a - plan.starts[i + 1] : b - plan.starts[i + 1]]
            lo, hi = max(a - _COMP_FFT, 0), min(b + _COMP_FFT, plan.n)
            out[..., lo:hi] += _compensate_seam(out[..., lo:hi], x1, x2, a - lo).astype(dtype)
    return out


# correlation-compensated cross-fade: STFT size / hop, and the half-width (bins) of the frequency smoothing
_COMP_FFT, _COMP_HOP, _COMP_SMOOTH = 2048, 512, 4


@functools.lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann
    w.flags.writeable = False
    return w


def _stft_centred(x: np.ndarray) -> np.ndarray:
    """[..., L] -> [..., T, F]: frames centred at t·hop for t < ceil(L / hop) + 1, zero padding outside x."""
    n, h = _COMP_FFT, _COMP_HOP
    t = -(-x.shape[-1] // h) + 1
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(n // 2, n // 2 + t * h - x.shape[-1])])
    frames = np.lib.stride_tricks.sliding_window_view(xp, n, axis=-1)[..., ::h, :][..., :t, :]
    return np.fft.rfft(frames * _hann(n), axis=-1)


def _istft_centred(spec: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`_stft_centred` (weighted overlap-add, Hann synthesis window): [..., T, F] -> [..., L]."""
    n, h = _COMP_FFT, _COMP_HOP
    k, t = n // h, spec.shape[-2]  # the hop divides n_fft: frame j, block i lands on output block j + i
    frames = np.fft.irfft(spec, n, axis=-1) * _hann(n)
    blocks = frames.reshape(*frames.shape[:-1], k, h)
    w2 = (_hann(n) ** 2).reshape(k, h)
    out = np.zeros((*spec.shape[:-2], t + k - 1, h))
    norm = np.zeros((t + k - 1, h))
    for i in range(k):
        out[..., i : i + t, :] += blocks[..., i, :]
        norm[i : i + t] += w2[i]
    out = (out / np.maximum(norm, 1e-12)).reshape(*spec.shape[:-2], -1)
    return out[..., n // 2 : n // 2 + length]


def _moving_sum(v: np.ndarray, half: int) -> np.ndarray:
    """Sum over the bins [f - half, f + half] (clipped to the axis) along the last axis."""
    c = np.concatenate([np.zeros((*v.shape[:-1], 1)), np.cumsum(v, axis=-1)], axis=-1)
    idx = np.arange(v.shape[-1])
    return c[..., np.minimum(idx + half + 1, v.shape[-1])] - c[..., np.maximum(idx - half, 0)]


def _compensate_seam(y: np.ndarray, x1: np.ndarray, x2: np.ndarray, a: int) -> np.ndarray:
    """Correction to add to ``y`` (the plain cross-fade around one seam) so that its level stays constant.

    With weights (1-r, r) the cross-fade of two signals of equal power P and correlation rho has power
    ((1-r)² + r² + 2·rho·r(1-r))·P: exactly P when rho = 1 (the band copied from the input), down to P/2
    (-3 dB) at the seam centre when rho = 0 (a band each window generated from its own noise). Per frequency
    bin, rho is the normalised cross-correlation of the two windows over the fade (STFT, smoothed over
    ±4 bins, clipped to [0, 1]), and each STFT frame of y is scaled by 1/sqrt((1-r)² + r² + 2·rho·r(1-r)),
    which is 1 outside the fade and wherever rho = 1.

    Args:
      y: [..., L] the plain cross-fade, covering the fade region with margins; x1, x2: [..., F] the outgoing
        and incoming windows over the fade region, which starts at sample ``a`` of y.
    Returns:
      [..., L] float64 correction (zero where no scaling applies).
    """
    f = x1.shape[-1]
    n, h = _COMP_FFT, _COMP_HOP
    # cross-spectra over frames lying wholly inside the fade (half-overlapping frames are enough here)
    seg = lambda v: np.lib.stride_tricks.sliding_window_view(  # noqa: E731
        np.asarray(v, np.float64), n, axis=-1)[..., :: n // 2, :] * _hann(n)
    s1, s2 = np.fft.rfft(seg(x1), axis=-1), np.fft.rfft(seg(x2), axis=-1)
    smooth = lambda v: _moving_sum(v, _COMP_SMOOTH)  # noqa: E731
    num = smooth(np.sum(np.real(s1 * np.conj(s2)), axis=-2))
    den = np.sqrt(smooth(np.sum(np.abs(s1) ** 2, axis=-2)) * smooth(np.sum(np.abs(s2) ** 2, axis=-2)))
    tiny = 1e-12 * np.max(den, axis=-1, keepdims=True) + 1e-300
    rho = np.where(den > tiny, np.clip(num / np.maximum(den, tiny), 0.0, 1.0), 1.0)  # [..., F]
    spec = _stft_centred(np.asarray(y, np.float64))
    centres = np.arange(spec.shape[-2]) * h
    r = np.sin(0.5 * np.pi * np.clip((centres - a + 0.5) / f, 0.0, 1.0)) ** 2  # the fade-in weight per frame
    p = (1 - r) ** 2 + r**2
    q = 2 * r * (1 - r)
    gain = 1.0 / np.sqrt(p[:, None] + q[:, None] * rho[..., None, :]) - 1.0  # [..., T, F], 0 where no change
    return _istft_centred(gain * spec, y.shape[-1])


# ----------------------------------------------------------------------------------------------------------
# seam measurement
# ----------------------------------------------------------------------------------------------------------


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| of the frames lying wholly inside x: [rows, T, n_fft // 2 + 1] (periodic Hann, no padding)."""
    t = (x.shape[-1] - n_fft) // hop + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :][..., :t, :]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(frames * win, axis=-1))


def _band_matrix(n_fft: int, sr: int, bands: int, fmin: float) -> np.ndarray:
    """[bands', n_fft // 2 + 1] 0/1 matrix pooling STFT bins into mel-spaced bands from fmin to sr/2 (each
    band at least one bin; bands' <= bands after merging bands narrower than a bin)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges_hz = hz(np.linspace(mel(fmin), mel(sr / 2), bands + 1))
    edges = np.unique(np.clip(np.round(edges_hz * n_fft / sr).astype(int), 0, n_fft // 2 + 1))
    edges[-1] = n_fft // 2 + 1
    m = np.zeros((len(edges) - 1, n_fft // 2 + 1))
    for j, (a, b) in enumerate(zip(edges, edges[1:])):
        m[j, a:b] = 1.0
    return m


def seam_flux(x: np.ndarray, plan: WindowPlan, sr: int = 48000, n_fft: int = 1024, hop: int = 480,
              bands: int | None = 64, fmin: float = 50.0, floor_db: float = -100.0) -> dict:
    """Spectral flux at the seams of an overlap-added signal against the rest of it.

    Flux of frame t = mean over bands of |L_t - L_{t-1}|, the L1 frame-to-frame change of the log-magnitude
    spectrum L (nepers): with ``bands`` (default 64), L is half the log of the STFT power pooled in mel-spaced
    bands from ``fmin`` to sr/2 (the scale on which the ear integrates: a level step in one band stands out
    against the frame-to-frame estimation noise of single bins); with ``bands=None``, L is log|X| of every
    bin >= ``fmin``. STFT: periodic Hann ``n_fft``, hop ``hop``, frames wholly inside the signal. A frame
    belongs to a seam when it or its predecessor overlaps that seam's cross-fade region (for a hard cut: the
    two samples either side of the cut). All leading axes (channels) are pooled.

    Args:
      x: [..., n] signal (n == plan.n), e.g. the output of :func:`overlap_add`.
      plan: its WindowPlan (``plan.seams`` locates the seams).
      sr: sample rate (Hz).
      floor_db: magnitude floor relative to the largest magnitude (keeps silence from dominating).
    Returns:
      dict with ``seams`` (count), ``seam_frames`` / ``rest_frames`` (counts), ``ratio`` (median seam flux /
      median rest flux: ~1 means the seams look like any other frame, >> 1 a discontinuity),
      ``tail_ratio`` (90th percentiles, seam / rest: a hard cut raises only one or two of the ~3 frames that
      span it, so it shows in the tail first), ``peak_ratio`` (largest seam flux / 99th percentile of the
      rest; grows with the number of seam frames, so compare it between plans with similar fades),
      ``seam_p50``, ``seam_p90``,
      ``seam_max``, ``rest_p50``, ``rest_p90``, ``rest_p99`` (flux values, nepers) and ``seam_rank`` (the
      fraction of rest frames whose flux is below the median seam flux; about 0.5 = indistinguishable).
      With no seams (one window) the seam entries are NaN.
    """
    x = np.asarray(x, np.float64)
    if x.shape[-1] != plan.n:
        raise ValueError(f"seam_flux: signal has {x.shape[-1]} samples, the plan {plan.n}")
    if plan.n < n_fft + hop:
        raise ValueError(f"seam_flux: signal of {plan.n} samples is shorter than two STFT frames")
    power = _stft_mag(x.reshape(-1, plan.n), n_fft, hop) ** 2  # [rows, T, F]
    if bands:
        power = power @ _band_matrix(n_fft, sr, bands, fmin).T
    else:
        power = power[..., int(np.ceil(fmin * n_fft / sr)):]
    level = 0.5 * np.log(power + (np.max(power) * 10 ** (floor_db / 10) + 1e-300))
    flux = np.mean(np.abs(np.diff(level, axis=-2)), axis=-1)  # [rows, T-1]; entry j compares frames j, j+1
    t = np.arange(1, level.shape[-2])
    seam = np.zeros(t.shape, bool)
    for a, b in plan.seams:
        lo, hi = (a - 1, a + 1) if a == b else (a, b)  # a hard cut changes between samples a-1 and a
        for frame in (t - 1, t):  # the frame or its predecessor spans [lo, hi)
            seam |= (frame * hop < hi) & (frame * hop + n_fft > lo)
    s_vals, r_vals = flux[:, seam].ravel(), flux[:, ~seam].ravel()
    nan = float("nan")
    rest = np.percentile(r_vals, [50, 90, 99]) if r_vals.size else [nan] * 3
    out = {"seams": len(plan.seams), "seam_frames": int(s_vals.size), "rest_frames": int(r_vals.size),
           "rest_p50": float(rest[0]), "rest_p90": float(rest[1]), "rest_p99": float(rest[2])}
    if s_vals.size:
        sp = np.percentile(s_vals, [50, 90])
        out.update(seam_p50=float(sp[0]), seam_p90=float(sp[1]), seam_max=float(s_vals.max()),
                   ratio=float(sp[0] / rest[0]), tail_ratio=float(sp[1] / rest[1]),
                   peak_ratio=float(s_vals.max() / rest[2]),
                   seam_rank=float(np.mean(r_vals < sp[0])) if r_vals.size else nan)
    else:
        out.update(seam_p50=nan, seam_p90=nan, seam_max=nan, ratio=nan, tail_ratio=nan, peak_ratio=nan, seam_rank=nan)
    return out
