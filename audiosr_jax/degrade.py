"""Random low-pass training pairs (the training-time degradation), on the host (scipy) or on device (JAX).

Each training example ``x`` (48 kHz, float32) is paired with a low-passed copy made by a randomly drawn
filter, so that one model learns every input bandwidth (docs/design.md §Input low-pass,
§Training data and degradation):

* family from {butter, cheby1, cheby2, ellip, bessel}, order in [2, 10], cutoff in [2, 16] kHz
  (uniform, or log-uniform); the draw depends *only* on ``(seed, epoch, index)`` through
  ``np.random.default_rng([seed, epoch, index])``, so any host in any order gets the same spec;
* **host path** (:func:`apply_lowpass`): the inference chain ``lowpass.lowpass_filter`` reused as is,
  i.e. ``sosfiltfilt`` -> ``resample_poly`` down to ``2·cutoff`` and back (a hard band limit) ->
  ``sosfiltfilt``;
* **device path** (:func:`lowpass_on_device`, :func:`degrade_on_device`): the same chain as one real gain
  in the frequency domain, ``rfft · gain -> irfft`` on a batch, jitted. A zero-phase ``sosfiltfilt`` pass
  is ``|H(f)|²``; the chain has two passes, so ``|H(f)|⁴``. The polyphase down/up is *not* a brick wall:
  ``resample_poly``'s Kaiser FIR (β = 5) has a transition of about ±5 % of the cutoff, modelled exactly
  as ``A(f)²`` (:func:`band_limit_response`), plus the power folded from the mirror frequency around the
  cutoff (:func:`chain_response`). The gain is computed on the host in float64 (:func:`chain_response`)
  or on device in float32 from the SOS coefficients (:func:`response_params` +
  :func:`chain_response_on_device`, within 0.01 dB of the host one above -60 dB);
* **STFT-domain condition** (:func:`log_mels_with_condition`, ``data.lowpass = "device_stft"``): the
  training step needs only the low-passed *mel*, and it takes the clean waveform's STFT for the target
  mel anyway; the same gain at the 1025 STFT bins times that magnitude STFT gives the condition mel with
  no extra FFT (no length-N rfft/irfft, no second STFT). Accuracy: see that function.

Design notes (filter designs are ``filters.design``, the reference's):

* ``cheby2(order, 60 dB, Wn)`` puts ``Wn`` at the *stop-band edge*: at low orders the pass band collapses
  (order 2: -3 dB at ~cutoff/20; order 4: ~cutoff/3; order 8: ~0.67·cutoff; order 10: ~0.8·cutoff).
  :class:`DegradeConfig` therefore draws cheby2 orders from ``[max(min_order, cheby2_min_order),
  max_order]`` (default 8) so that a cheby2 example's bandwidth stays near its nominal cutoff.
* ``bessel`` uses scipy's default ``norm="phase"``: the -3 dB point is below ``Wn`` (order 2: 0.81·,
  order 4: 0.70·, order 10: 0.51·cutoff). It is the reference's design and is kept; the nominal cutoff
  is then the band limit rather than the -3 dB point.

Known differences between the two paths (bounded in ``tests/test_degrade.py``, white noise, N = 2**15):

* spectra: pass band (100 Hz .. 0.9·cutoff) within 0.5 dB (measured <= 0.17 dB); above 1.25·cutoff both
  paths >= 40 dB down (measured >= 56 dB for every family/order tested, both paths within ~1 dB);
* waveforms, away from the clip edges: relative RMS error 0.2 % (bessel-10, cheby2) to 10 % (ellip /
  cheby1 of low order). The rest is the mirrored (aliased/imaged) energy within ~±5 % of the cutoff,
  which the host path makes and a frequency-domain gain cannot (it matches its power instead);
* edges: the device path is circular (the end of a clip leaks into its start through the filter's
  impulse response) and has no ``sosfiltfilt`` edge padding; the error is largest in the first/last
  few thousand samples (up to ~0.5–0.8 of the signal RMS sample-wise in the first ~2000 samples for
  sharp, low-cutoff filters) and decays with the filter's impulse response.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal

from audiosr_jax import audio
from audiosr_jax.filters import design, lowpass_filter

FAMILIES = ("butter", "cheby1", "cheby2", "ellip", "bessel")
CUTOFF_DISTRIBUTIONS = ("uniform", "log")


@dataclasses.dataclass(frozen=True)
class LowpassSpec:
    """One drawn low-pass: filter family, order (2..10) and cutoff (Hz, an integer value)."""

    ftype: str
    order: int
    cutoff_hz: float


@dataclasses.dataclass(frozen=True)
class DegradeConfig:
    """Distribution of the training low-pass (plain fields, ml_collections-friendly).

    ``cutoff_distribution``: "uniform" (the paper's) or "log" (log-uniform, more weight on low cutoffs).
    ``cheby2_min_order``: lowest order drawn for cheby2 (see the module docstring; 2 restores the plain range).
    ``cutoff_step_hz``: cutoffs are drawn on a grid of this step (Hz, integer). 1 is exact. ``resample_poly``'s
    FIR has ``20·48000/gcd(2·cutoff, 48000)`` taps (up to ~10⁶); ``lowpass`` caches it (one per divisor of
    48000), so once warm the host path runs as fast with 1 as with 50 (~220x real time per core, measured);
    a coarser grid only means fewer, smaller filters to design at the start.
    """

    families: tuple = FAMILIES
    min_order: int = 2
    max_order: int = 10
    min_cutoff_hz: float = 2000.0
    max_cutoff_hz: float = 16000.0
    cutoff_distribution: str = "uniform"
    sample_rate: int = 48000
    cheby2_min_order: int = 8
    cutoff_step_hz: int = 1

    def __post_init__(self):
        # accept lists (from JSON / ml_collections) but store a tuple so the config stays hashable
        object.__setattr__(self, "families", tuple(self.families))
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {self.families}")
        if not 2 <= self.min_order <= self.max_order <= 10:
            raise ValueError(f"need 2 <= min_order <= max_order <= 10, got {self.min_order}, {self.max_order}")
        if not 1.0 <= self.min_cutoff_hz <= self.max_cutoff_hz < self.sample_rate / 2:
            raise ValueError(
                f"need 1 <= min_cutoff_hz <= max_cutoff_hz < sample_rate/2, got "
                f"{self.min_cutoff_hz}, {self.max_cutoff_hz} at {self.sample_rate} Hz"
            )
        if int(self.cutoff_step_hz) != self.cutoff_step_hz or self.cutoff_step_hz < 1:
            raise ValueError(f"cutoff_step_hz must be a positive integer, got {self.cutoff_step_hz}")
        if self.cutoff_distribution not in CUTOFF_DISTRIBUTIONS:
            raise ValueError(f"cutoff_distribution must be one of {CUTOFF_DISTRIBUTIONS}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["families"] = list(self.families)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DegradeConfig:
        return cls(**d)


def draw_spec(cfg: DegradeConfig, seed: int, epoch: int, index: int) -> LowpassSpec:
    """The low-pass for example ``index`` of ``epoch``; a pure function of ``(seed, epoch, index)``.

    Uses a fresh ``np.random.default_rng([seed, epoch, index])`` (no global state), so it is identical on
    every host and independent of call order. The cutoff is floored to the ``cutoff_step_hz`` grid (whole
    Hz at least, as ``lowpass_filter`` uses ``int(cutoff_hz)``), so the spec states exactly what is applied.
    """
    rng = np.random.default_rng([int(seed), int(epoch), int(index)])
    ftype = cfg.families[int(rng.integers(len(cfg.families)))]
    lo = max(cfg.min_order, cfg.cheby2_min_order) if ftype == "cheby2" else cfg.min_order
    lo = min(lo, cfg.max_order)
    order = int(rng.integers(lo, cfg.max_order + 1))
    u = rng.random()
    if cfg.cutoff_distribution == "log":
        a, b = math.log(cfg.min_cutoff_hz), math.log(cfg.max_cutoff_hz)
        cutoff = math.exp(a + u * (b - a))
    else:
        cutoff = cfg.min_cutoff_hz + u * (cfg.max_cutoff_hz - cfg.min_cutoff_hz)
    step = int(cfg.cutoff_step_hz)
    lo_grid = math.ceil(cfg.min_cutoff_hz / step) * step
    cutoff = float(max(math.floor(cutoff / step) * step, lo_grid, 1))
    return LowpassSpec(ftype=ftype, order=order, cutoff_hz=cutoff)


def apply_lowpass(x: np.ndarray, spec: LowpassSpec, sr: int = 48000) -> np.ndarray:
    """Host path: ``lowpass.lowpass_filter(x, spec.cutoff_hz, sr, spec.order, spec.ftype)``.

    Args: x [..., N] float waveform at ``sr`` Hz. Returns: float32 [..., N].
    """
    y = lowpass_filter(np.asarray(x, np.float32), spec.cutoff_hz, sr=sr, order=spec.order, ftype=spec.ftype)
    return y.astype(np.float32)


def make_pair(x: np.ndarray, cfg: DegradeConfig, seed: int, epoch: int, index: int) -> tuple[np.ndarray, LowpassSpec]:
    """Draw the spec for ``(seed, epoch, index)`` and low-pass ``x`` [N] with it on the host.

    Returns: ``(low [N] float32, spec)``.
    """
    spec = draw_spec(cfg, seed, epoch, index)
    return apply_lowpass(x, spec, cfg.sample_rate), spec


# ----------------------------------------------------------------------------------------------------------
# Device path
# ----------------------------------------------------------------------------------------------------------


def _rfft_freqs(n_fft: int, sr: int) -> np.ndarray:
    return np.arange(n_fft // 2 + 1, dtype=np.float64) * (sr / n_fft)


def filter_response_sq(spec: LowpassSpec, n_fft: int, sr: int = 48000) -> np.ndarray:
    """``|H(e^jw)|²`` of the digital SOS filter of ``spec`` (``sosfreqz``) at the rfft bins of length ``n_fft``.

    This is the gain of one zero-phase ``sosfiltfilt`` pass. Returns: float64 [n_fft // 2 + 1].
    """
    hi = int(spec.cutoff_hz) / (0.5 * sr)
    order = int(min(max(spec.order, 2), 10))  # lowpass_filter's clamp
    sos = design(order, hi, spec.ftype)
    _, h = signal.sosfreqz(sos, worN=_rfft_freqs(n_fft, sr), fs=sr)
    return np.abs(h) ** 2


def _fs_down(spec: LowpassSpec, sr: int) -> int:
    hi = int(spec.cutoff_hz) / (0.5 * sr)
    return int(hi * sr)  # exactly as lowpass_filter (the float expression can round down by one Hz)


_MAX_SECTIONS = 5  # order <= 10
_KAISER_BETA = 5.0
_KAISER_U = 60.0  # the CDF table spans |ν·T| <= 60


@functools.lru_cache(maxsize=None)
def _kaiser_cdf_table() -> tuple[np.ndarray, np.ndarray]:
    # the continuous Kaiser spectrum's CDF as a function of u = ν·T (universal for a fixed β)
    u = np.linspace(-_KAISER_U, _KAISER_U, 24001)
    r = np.sqrt((_KAISER_BETA**2 - (np.pi * u) ** 2).astype(np.complex128))
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(np.abs(r) > 1e-12, np.sinh(r) / r, 1.0).real
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(u))])
    return u, cdf / cdf[-1]  # float64


def band_limit_response(spec: LowpassSpec, n_fft: int, sr: int = 48000) -> np.ndarray:
    """Amplitude gain of one ``resample_poly`` step of the band limit, at the rfft bins.

    ``resample_poly(x, up, down)`` filters at the intermediate rate ``sr·up`` with
    ``firwin(2·10·max(up, down) + 1, 1/max(up, down), window=("kaiser", 5.0))``: a Kaiser-windowed sinc with
    cutoff ``fc = fs_down / 2`` and window length ``T = 20·max(up, down) / (sr·up)`` seconds. It is *not* a
    brick wall: its transition spans roughly ``fc ± fs_down/20`` (about ±5 % of the cutoff). Its response is
    the ideal low-pass convolved with the window's spectrum; with the continuous Kaiser transform
    ``W(ν) = T/I0(β) · sinh(√(β² − (πTν)²)) / √(β² − (πTν)²)`` (∫W = 1) that is
    ``A(f) = ∫_{f−fc}^{f+fc} W(ν) dν``. The back-up step uses the same filter, so the band limit's gain is
    ``A(f)²``. Aliasing of the residual above ``fc`` (the window's side lobes, <= -45 dB) is not modelled.

    Returns: float64 [n_fft // 2 + 1] in [0, 1].
    """
    fs_down = _fs_down(spec, sr)
    g = math.gcd(fs_down, sr)
    up, down = fs_down // g, sr // g
    t_win = 20.0 * max(up, down) / (sr * up)
    fc = fs_down / 2.0
    u, cdf_u = _kaiser_cdf_table()
    f = _rfft_freqs(n_fft, sr)
    cdf = lambda v: np.interp(v * t_win, u, cdf_u, left=0.0, right=1.0)  # noqa: E731
    a = cdf(f + fc) - cdf(f - fc)
    return np.clip(a, 0.0, 1.0)


def chain_response(spec: LowpassSpec, n_fft: int, sr: int = 48000) -> np.ndarray:
    """Amplitude gain that reproduces the host chain's power spectrum on white noise, at the rfft bins.

    The chain is ``sosfiltfilt`` (``|H|²``) -> ``resample_poly`` down (``A``, then folding at
    ``fs_down/2``) -> up (imaging, ``A`` again) -> ``sosfiltfilt`` (``|H|²``). Away from the band limit it is
    linear and zero phase with gain ``|H|⁴·A²``. Within about ±5 % of the cutoff the down/up step is not
    time invariant: the output at ``f`` also carries the input from the mirror ``f' = fs_down − f``
    (aliased on the way down, imaged on the way up), and the power gain there is
    ``|H(f)|⁴·A(f)²·(A(f)²|H(f)|⁴ + A(f')²|H(f')|⁴)``. A frequency-domain filter cannot create the mirrored
    copy, so this gain gives the *same power* at ``f`` from the input at ``f`` alone (exact for white
    noise and any locally flat spectrum, which is what the mel front-end sees); for a pure tone right at
    the cutoff the host path has a mirrored tone that this path lacks. Feed the result (stacked per
    example) to :func:`lowpass_on_device`.

    Returns: float32 [n_fft // 2 + 1].
    """
    h2 = filter_response_sq(spec, n_fft, sr)
    a = band_limit_response(spec, n_fft, sr)
    f = _rfft_freqs(n_fft, sr)
    mirror = np.clip(_fs_down(spec, sr) - f, 0.0, None)
    near = (a > 0) & (mirror < f[-1])
    a_m = np.zeros_like(a)
    h2_m = np.zeros_like(h2)
    if near.any():
        a_m[near] = np.interp(mirror[near], f, a)
        _, h = signal.sosfreqz(
            design(int(min(max(spec.order, 2), 10)), int(spec.cutoff_hz) / (0.5 * sr), spec.ftype),
            worN=mirror[near],
            fs=sr,
        )
        h2_m[near] = np.abs(h) ** 2
    power = h2**2 * a**2 * (a**2 * h2**2 + a_m**2 * h2_m**2)
    return np.sqrt(power).astype(np.float32)


def chain_responses(specs, n_fft: int, sr: int = 48000) -> np.ndarray:
    """:func:`chain_response` for a batch of specs. Returns: float32 [B, n_fft // 2 + 1]."""
    return np.stack([chain_response(s, n_fft, sr) for s in specs])


@jax.jit
def lowpass_on_device(x: jnp.ndarray, response: jnp.ndarray) -> jnp.ndarray:
    """Device path: ``irfft(rfft(x) · response)`` per example (zero phase, circular).

    Args:
      x: [B, N] float waveforms.
      response: [B, N // 2 + 1] real non-negative gain per rfft bin, normally :func:`chain_responses`
        (``|H|⁴`` times the band limit) for length N, or
        :func:`chain_response_on_device`.
    Returns: float32 [B, N].
    """
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[-1]
    spec = jnp.fft.rfft(x, axis=-1) * jnp.asarray(response, jnp.float32)
    return jnp.fft.irfft(spec, n=n, axis=-1).astype(jnp.float32)


# The device path without per-example host work beyond the filter design (~1 ms): the same gain as
# chain_response, evaluated in float32 on device from the SOS coefficients and the band-limit parameters.


def response_params(specs, sr: int = 48000) -> dict:
    """Per-example parameters of :func:`chain_response_on_device` (host: the filter design, ~1 ms per spec).

    Returns: ``{"sos": float32 [B, 5, 6] (padded with identity sections), "fc": [B] band-limit Hz,
    "t_win": [B] Kaiser window length s, "fs_down": [B] Hz}``.
    """
    sos = np.tile(np.array([1, 0, 0, 1, 0, 0], np.float64), (len(specs), _MAX_SECTIONS, 1))
    fc, t_win, fs_d = [], [], []
    for b, spec in enumerate(specs):
        s = design(int(min(max(spec.order, 2), 10)), int(spec.cutoff_hz) / (0.5 * sr), spec.ftype)
        sos[b, : len(s)] = s
        fs_down = _fs_down(spec, sr)
        g = math.gcd(fs_down, sr)
        up, down = fs_down // g, sr // g
        fc.append(fs_down / 2.0)
        t_win.append(20.0 * max(up, down) / (sr * up))
        fs_d.append(float(fs_down))
    f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return {"sos": f32(sos), "fc": f32(fc), "t_win": f32(t_win), "fs_down": f32(fs_d)}


def _sos_gain_sq(sos: jnp.ndarray, c1, s1) -> jnp.ndarray:
    # |H(e^{jw})|² of [B, S, 6] SOS given cos w, sin w ([B or 1, F]); cos 2w, sin 2w by the double angle
    c2, s2 = 2.0 * c1 * c1 - 1.0, 2.0 * s1 * c1
    out = None
    for k in range(sos.shape[1]):
        b0, b1, b2, a0, a1, a2 = (sos[:, k, i][:, None] for i in range(6))
        num = (b0 + b1 * c1 + b2 * c2) ** 2 + (b1 * s1 + b2 * s2) ** 2
        den = (a0 + a1 * c1 + a2 * c2) ** 2 + (a1 * s1 + a2 * s2) ** 2
        out = num / den if out is None else out * (num / den)
    return out


def _uniform_interp(v: jnp.ndarray, table: jnp.ndarray, lo: float, hi: float) -> jnp.ndarray:
    # linear interpolation on a uniform grid over [lo, hi], clamped (a gather, no search)
    pos = (jnp.clip(v, lo, hi) - lo) * ((table.shape[0] - 1) / (hi - lo))
    i0 = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, table.shape[0] - 2)
    w = pos - i0
    return table[i0] * (1.0 - w) + table[i0 + 1] * w


def _chain_response_rows(params: dict, n: int, sr: int) -> jnp.ndarray:
    # chain_response_on_device for a batch of parameter rows, all at once: [B, n // 2 + 1]
    cdf_tab = jnp.asarray(_kaiser_cdf_table()[1], jnp.float32)
    f = (jnp.arange(n // 2 + 1, dtype=jnp.float32) * (sr / n))[None, :]
    fc, t_win, fs_down = (params[k][:, None] for k in ("fc", "t_win", "fs_down"))

    def band(freq):
        cdf = lambda v: _uniform_interp(v * t_win, cdf_tab, -_KAISER_U, _KAISER_U)  # noqa: E731
        return jnp.clip(cdf(freq + fc) - cdf(freq - fc), 0.0, 1.0)

    # the grid's angles once; the mirror's (w_d - w, clipped at 0) by angle subtraction per row
    w = jnp.arange(n // 2 + 1, dtype=jnp.float32) * (2.0 * np.pi / n)
    c1, s1 = jnp.cos(w)[None, :], jnp.sin(w)[None, :]
    wd = (2.0 * np.pi / sr) * fs_down
    mirror_pos = f < fs_down
    cm = jnp.where(mirror_pos, jnp.cos(wd) * c1 + jnp.sin(wd) * s1, 1.0)
    sm = jnp.where(mirror_pos, jnp.sin(wd) * c1 - jnp.cos(wd) * s1, 0.0)
    mirror = jnp.maximum(fs_down - f, 0.0)
    h2, h2_m = _sos_gain_sq(params["sos"], c1, s1), _sos_gain_sq(params["sos"], cm, sm)
    a, a_m = band(f), band(mirror)
    return jnp.sqrt(h2**2 * a**2 * (a**2 * h2**2 + a_m**2 * h2_m**2))


@functools.partial(jax.jit, static_argnames=("n", "sr"))
def chain_response_on_device(params: dict, n: int, sr: int = 48000) -> jnp.ndarray:
    """:func:`chain_response` for a batch, on device in float32. Returns: [B, n // 2 + 1]."""

    def per_row(p):
        # CPU: one example at a time (lax.map): its [n // 2 + 1] temporaries stay in cache, which measured
        # ~2x faster on one core than the batched form (same arithmetic, identical values)
        one = lambda q: _chain_response_rows(jax.tree.map(lambda v: v[None], q), n, sr)[0]  # noqa: E731
        return jax.lax.map(one, p)

    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    return jax.lax.platform_dependent(
        params, cpu=per_row, default=lambda p: _chain_response_rows(p, n, sr)
    )


@functools.partial(jax.jit, static_argnames=("sr",))
def degrade_on_device(x: jnp.ndarray, params: dict, sr: int = 48000) -> jnp.ndarray:
    """:func:`lowpass_on_device` with the gain from :func:`chain_response_on_device`: x [B, N] -> [B, N]."""
    return lowpass_on_device(x, chain_response_on_device(params, x.shape[-1], sr))


# ----------------------------------------------------------------------------------------------------------
# STFT-domain condition: the low-passed *mel* from the clean waveform's STFT (no extra FFT)
# ----------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("sr",))
def stft_gain(params: dict, sr: int = 48000) -> jnp.ndarray:
    """The chain gain (:func:`chain_response_on_device`) at the 1025 bins of the mel front-end's 2048-point
    STFT (bin k at ``k · sr / 2048`` Hz). Args: ``params`` from :func:`response_params` (batch B).
    Returns: float32 [B, 1025]."""
    return chain_response_on_device(params, audio.N_FFT, sr)


def _cond_log_mel(mag: jnp.ndarray, gain: jnp.ndarray, project) -> jnp.ndarray:
    # mag [..., T, 1025] · gain [..., 1025] -> log-mel [..., T, 256]
    return audio.log_mel_from(mag * gain[..., None, :], project)[0]


@functools.partial(jax.jit, static_argnames=("sr",))
def lowpassed_log_mel_from_stft(mag: jnp.ndarray, params: dict, sr: int = 48000) -> jnp.ndarray:
    """Log-mel of the low-passed waveform, from the clean waveform's |STFT| and the filter parameters.

    ``log(clip(mel_fb @ (|STFT(x)| · G), 1e-5))`` with ``G`` = :func:`stft_gain` (the same zero-phase chain
    gain as :func:`degrade_on_device`, per example). See :func:`log_mels_with_condition` for why this is
    close to ``log_mel_spectrogram(degrade_on_device(x, params))`` and the measured error.

    Args:
      mag: [B, T, 1025] float32, ``audio.stft_magnitude`` of the clean (normalised) waveforms.
      params: :func:`response_params` of the B examples.
    Returns: float32 [B, T, 256].
    """
    gain = stft_gain(params, sr)
    mag = jnp.asarray(mag, jnp.float32)
    return jax.lax.platform_dependent(
        mag, gain,
        cpu=lambda m, g: jax.lax.map(lambda a: _cond_log_mel(a[0], a[1], audio.mel_banded), (m, g)),
        default=lambda m, g: _cond_log_mel(m, g, audio.mel_dense),
    )


@functools.partial(jax.jit, static_argnames=("sr",))
def log_mels_with_condition(wave: jnp.ndarray, params: dict, sr: int = 48000) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Target and low-pass condition log-mels from ONE STFT: ``(log_mel(x), ≈ log_mel(lowpass(x)))``.

    The target is ``audio.log_mel_spectrogram(wave)[0]``. The condition multiplies the clean magnitude
    STFT by the chain gain ``G(f_k)`` (:func:`stft_gain`, the gain :func:`degrade_on_device` applies to the
    whole clip's rfft, here at the 1025 STFT bins) before the mel projection, instead of filtering the
    waveform (a length-N rfft/irfft) and taking a second STFT.

    Why it is close: the chain is a zero-phase linear filter ``g`` (plus the band limit's mirrored power,
    which ``G`` already folds in). For a frame ``w·x`` of the 2048-point Hann window, ``STFT(g * x)`` at
    bin k is ``Σ_f X(f) G(f) W(f_k − f)``; where ``G`` is flat across the window's main lobe (±2 bins =
    ±47 Hz) this is ``G(f_k) · STFT(x)_k`` — i.e. when the filter's impulse response is short against the
    2048-sample window. It deviates only within a few bins of a steep transition (sharp, low-cutoff
    filters: a tonal partial's leakage into a neighbouring bin is weighted by ``G`` at that bin instead of
    at the partial) and in the deep stop band, where the true STFT holds the Hann window's side-lobe
    leakage from the pass band that ``G(f_k)·|X_k|`` attenuates with the filter (both far down, at the log
    floor in the tests). No circular wrap-around and no clip-edge transient either (each frame is filtered
    on its own, as if the clip extended by reflection).

    Measured against the host scipy chain (``tests/test_degrade_stft.py``: the 6 real clips of the corpus
    slice + white noise, 5 families, orders 2–10, cutoffs 2–15 kHz; per log-mel element, in dB), side by
    side with the waveform device path (``log_mel_spectrogram(degrade_on_device(...))``):

    * pass band (mel filters where the chain gain is >= -1 dB): mean |error| <= 0.06 dB, 99th percentile
      <= 0.42 dB (waveform path: 0.03 / 0.14 dB); largest for bessel-10 and cheby2 at 2 kHz;
    * stop band (>= 1.25·cutoff): both paths at the log floor (>= 99 % of the elements >= 40 dB down);
    * around the cutoff both differ from the host path, which has the mirrored (aliased) energy of the
      band limit; the STFT path by up to 1.9 dB more on average than the waveform path, for the steepest
      gains at low cutoffs (ellip-10, cheby2 at 2 kHz).

    Args:
      wave: [B, N] float32 normalised 48 kHz waveforms (N a multiple of 480).
      params: :func:`response_params` of the B examples (the loader's ``lowpass_params``).
    Returns: ``(target, condition)``, float32 [B, N // 480, 256] each.
    """
    wave = jnp.asarray(wave, jnp.float32)
    gain = stft_gain(params, sr)
    # CPU: per example (lax.map), its frames/spectra stay in cache (as audio.log_mel_spectrogram)
    return jax.lax.platform_dependent(
        wave, gain,
        cpu=lambda w, g: jax.lax.map(lambda a: _target_and_condition(a[0], a[1], audio.mel_banded), (w, g)),
        default=lambda w, g: _target_and_condition(w, g, audio.mel_dense),
    )


def _target_and_condition(wave, gain, project):
    # wave [..., N], gain [..., 1025] -> (target, condition) log-mels [..., N // 480, 256], one STFT
    mag = audio.stft_mag_frames(wave)
    return audio.log_mel_from(mag, project)[0], _cond_log_mel(mag, gain, project)
