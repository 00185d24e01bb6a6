"""Noise schedules: ᾱ(t) on the discrete grid t = 0 … T−1.

AudioSR uses the cosine schedule of Nichol & Dhariwal *without* the usual β ≤ 0.999 clip, which makes
ᾱ_{T−1} = 0 exactly (zero terminal SNR). Everything is computed in float64 on the host, as the reference
does, then handed to the sampler as float32 tables.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_alphas_cumprod", "make_alphas_cumprod", "SCHEDULES"]


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


def _linear_alphas_cumprod(num_timesteps: int = 1000, start: float = 1e-4, end: float = 2e-2) -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(start, end, num_timesteps, dtype=np.float64))


def _scaled_linear_alphas_cumprod(num_timesteps: int = 1000, start: float = 0.0015, end: float = 0.0195) -> np.ndarray:
    betas = np.linspace(start ** 0.5, end ** 0.5, num_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


SCHEDULES = {
    "cosine": cosine_alphas_cumprod,
    "linear": _linear_alphas_cumprod,
    "scaled_linear": _scaled_linear_alphas_cumprod,
}


def make_alphas_cumprod(name: str = "cosine", num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    """ᾱ table (float64 [num_timesteps]) of the named schedule; kwargs go to the schedule function."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps, **kwargs)
