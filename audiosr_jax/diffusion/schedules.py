"""Noise schedules: ᾱ(t) on the discrete grid t = 0 … T−1, for x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε.

AudioSR uses the cosine schedule of Nichol & Dhariwal *without* the usual β ≤ 0.999 clip, which makes
ᾱ_{T−1} = 0 exactly (zero terminal SNR). Everything is computed in float64 on the host, as the reference
does, then handed to the sampler as float32 tables.

The registry (`make_alphas_cumprod(name, T, **kwargs)`, one line each, with its source):

* ``cosine``: Nichol & Dhariwal 2021, unclipped as in AudioSR (ᾱ_{T−1} = 0); kwargs s=8e-3, clip_beta=None.
* ``cosine_clipped``: the iDDPM variant, β ≤ max_beta=0.999 (terminal SNR > 0).
* ``linear``: Ho et al. 2020, β linear from start=1e-4 to end=2e-2 (terminal SNR > 0).
* ``scaled_linear``: Rombach et al. 2022 (LDM/AudioLDM), √β linear from 0.0015 to 0.0195 (terminal SNR > 0).
* ``linear_zero_snr`` / ``scaled_linear_zero_snr``: those two rescaled by Lin et al. 2023 ("Common Diffusion
  Noise Schedules and Sample Steps are Flawed", Algorithm 1): √ᾱ shifted so the last is exactly 0 and scaled
  so the first is unchanged.
* ``sigmoid``: Chen 2023 ("On the importance of noise scheduling"; Jabri et al. 2023), γ(t) =
  (σ(end/τ) − σ((t·(end−start)+start)/τ)) / (σ(end/τ) − σ(start/τ)), start=−3, end=3, tau=1; γ(1) = 0 exactly
  (zero terminal SNR; Chen clips at clip_min=1e-9, pass it for theirs).
* ``shifted_cosine``: ``cosine`` with a required ``shift`` (Hoogeboom et al. 2023, "simple diffusion").

Every schedule also takes ``shift`` (default 1, the identity): logSNR'(t) = logSNR(t) + 2·log(shift), with
logSNR = log(ᾱ/(1−ᾱ)), i.e. ᾱ' = s²ᾱ/(s²ᾱ + 1 − ᾱ); ᾱ = 0 and 1 stay put. shift < 1 adds noise (Hoogeboom's
64/resolution for images larger than 64²).

The continuous-time schedules (cosine, sigmoid) are discretised at t = (i+1)/T for i = 0 … T−1, so ᾱ_{T−1} =
ᾱ(1); `alpha_bar(name, t)` / `log_snr(name, t)` give them at any t ∈ [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cosine_alphas_cumprod", "make_alphas_cumprod", "SCHEDULES", "CONTINUOUS", "alpha_bar", "log_snr",
           "shift_alphas_cumprod", "rescale_zero_terminal_snr", "terminal_snr", "table_log_snr"]


# --------------------------------------------------------------------------------------------- continuous time


def _cosine_alpha_bar(t, s: float = 8e-3) -> np.ndarray:
    """ᾱ(t) = f(t)/f(0), f(t) = cos²((t + s)/(1 + s)·π/2); ᾱ(1) = 0 exactly (cos(π/2) is 6e-17 in floats)."""
    t = np.asarray(t, np.float64)
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    return np.where(t >= 1.0, 0.0, f)


def _sigmoid_alpha_bar(t, start: float = -3.0, end: float = 3.0, tau: float = 1.0, clip_min: float = 0.0):
    """Chen 2023's γ(t) (ᾱ): 1 at t = 0, 0 at t = 1 (or clip_min), monotone in between."""
    t = np.asarray(t, np.float64)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    v_start, v_end = sig(start / tau), sig(end / tau)
    g = (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)
    g = np.where(t >= 1.0, 0.0, np.where(t <= 0.0, 1.0, g))  # exact end points despite rounding
    return np.clip(g, clip_min, 1.0)


CONTINUOUS = {"cosine": _cosine_alpha_bar, "shifted_cosine": _cosine_alpha_bar, "sigmoid": _sigmoid_alpha_bar}


def shift_alphas_cumprod(ac, shift: float) -> np.ndarray:
    """ᾱ with its log-SNR shifted by 2·log(shift): ᾱ' = s²ᾱ/(s²ᾱ + 1 − ᾱ) (float64, same shape)."""
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"schedule shift must be a positive number, got {shift!r}")
    ac = np.asarray(ac, np.float64)
    if shift == 1.0:
        return ac
    s2 = float(shift) ** 2
    return s2 * ac / (s2 * ac + (1.0 - ac))


def alpha_bar(name: str, t, shift: float = 1.0, **kwargs) -> np.ndarray:
    """ᾱ(t) of a continuous-time schedule ("cosine", "shifted_cosine", "sigmoid") at t ∈ [0, 1] (float64)."""
    if name not in CONTINUOUS:
        raise ValueError(f"schedule {name!r} has no continuous-time form; choose from {sorted(CONTINUOUS)}")
    return shift_alphas_cumprod(CONTINUOUS[name](t, **kwargs), shift)


def log_snr(name: str, t, shift: float = 1.0, **kwargs) -> np.ndarray:
    """logSNR(t) = log(ᾱ/(1−ᾱ)) of a continuous-time schedule (float64; −inf at t = 1, +inf at t = 0)."""
    return table_log_snr(alpha_bar(name, t, shift, **kwargs))


def table_log_snr(ac) -> np.ndarray:
    """log(ᾱ/(1−ᾱ)) elementwise (float64), ±inf at ᾱ = 0 / 1."""
    ac = np.asarray(ac, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(ac) - np.log1p(-ac)


def terminal_snr(ac) -> float:
    """SNR ᾱ/(1−ᾱ) at the last timestep of a table (0.0 for a zero-terminal-SNR schedule)."""
    last = float(np.asarray(ac, np.float64)[-1])
    return last / (1.0 - last)


# --------------------------------------------------------------------------------------------- discrete tables


def cosine_alphas_cumprod(num_timesteps: int = 1000, s: float = 8e-3, clip_beta: float | None = None) -> np.ndarray:
    """ᾱ_t for t = 0 … num_timesteps−1 (float64 [num_timesteps]).

    β_t = 1 − f(t+1)/f(t) with f(t) = cos²((t/T + s)/(1 + s)·π/2); ᾱ_t = ∏_{i≤t}(1 − β_i), so ᾱ_0 = f(1)/f(0)
    (0.9999587 for T=1000) and, unclipped, ᾱ_{T−1} = 0. `clip_beta=0.999` gives the common clipped variant.
    """
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps + s
    f = np.cos(steps / (1 + s) * np.pi / 2) ** 2
    f = f / f[0]
    betas = 1.0 - f[1:] / f[:-1]
    if clip_beta is not None:
        betas = np.clip(betas, 0.0, clip_beta)
    return np.cumprod(1.0 - betas)


def _cosine_clipped_alphas_cumprod(num_timesteps: int = 1000, s: float = 8e-3, max_beta: float = 0.999) -> np.ndarray:
    return cosine_alphas_cumprod(num_timesteps, s, clip_beta=max_beta)


def _shifted_cosine_alphas_cumprod(num_timesteps: int = 1000, s: float = 8e-3) -> np.ndarray:
    return cosine_alphas_cumprod(num_timesteps, s)


def _linear_alphas_cumprod(num_timesteps: int = 1000, start: float = 1e-4, end: float = 2e-2) -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(start, end, num_timesteps, dtype=np.float64))


def _scaled_linear_alphas_cumprod(num_timesteps: int = 1000, start: float = 0.0015, end: float = 0.0195) -> np.ndarray:
    betas = np.linspace(start ** 0.5, end ** 0.5, num_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def rescale_zero_terminal_snr(ac) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1: √ᾱ' = (√ᾱ − √ᾱ_{T−1})·√ᾱ_0/(√ᾱ_0 − √ᾱ_{T−1}); ᾱ'_0 = ᾱ_0, ᾱ'_{T−1} = 0."""
    r = np.sqrt(np.asarray(ac, np.float64))
    first, last = r[0], r[-1]
    r = (r - last) * (first / (first - last))
    r[-1] = 0.0  # exactly, whatever the rounding
    return r ** 2


def _linear_zero_snr_alphas_cumprod(num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    return rescale_zero_terminal_snr(_linear_alphas_cumprod(num_timesteps, **kwargs))


def _scaled_linear_zero_snr_alphas_cumprod(num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    return rescale_zero_terminal_snr(_scaled_linear_alphas_cumprod(num_timesteps, **kwargs))


def _sigmoid_alphas_cumprod(num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    return _sigmoid_alpha_bar(np.arange(1, num_timesteps + 1, dtype=np.float64) / num_timesteps, **kwargs)


SCHEDULES = {
    "cosine": cosine_alphas_cumprod,
    "cosine_clipped": _cosine_clipped_alphas_cumprod,
    "shifted_cosine": _shifted_cosine_alphas_cumprod,
    "linear": _linear_alphas_cumprod,
    "scaled_linear": _scaled_linear_alphas_cumprod,
    "linear_zero_snr": _linear_zero_snr_alphas_cumprod,
    "scaled_linear_zero_snr": _scaled_linear_zero_snr_alphas_cumprod,
    "sigmoid": _sigmoid_alphas_cumprod,
}


def make_alphas_cumprod(name: str = "cosine", num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    """ᾱ table (float64 [num_timesteps]) of the named schedule (see the module docstring); kwargs go to the
    schedule function, except ``shift`` (log-SNR shift, any schedule). Raises ValueError for an unknown name,
    bad kwargs, or a table that is not a schedule (outside [0, 1], increasing, or ᾱ_0 not in (0, 1))."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    if int(num_timesteps) != num_timesteps or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    kwargs = dict(kwargs)
    if name == "shifted_cosine" and "shift" not in kwargs:
        raise ValueError("schedule 'shifted_cosine' needs a shift kwarg (e.g. shift=0.5 for 2x the base resolution)")
    shift = float(kwargs.pop("shift", 1.0))
    try:
        ac = SCHEDULES[name](int(num_timesteps), **kwargs)
    except TypeError as e:
        raise ValueError(f"schedule {name!r}: bad keyword arguments {sorted(kwargs)}: {e}") from None
    ac = shift_alphas_cumprod(ac, shift)
    if not (np.all(np.isfinite(ac)) and np.all((ac >= 0) & (ac <= 1)) and np.all(np.diff(ac) <= 0)
            and 0 < ac[0] < 1):
        raise ValueError(f"schedule {name!r} with {kwargs or 'defaults'}, shift={shift}: alpha_cumprod is not "
                         "a non-increasing table in [0, 1] starting in (0, 1)")
    return ac
