"""Samplers as pure functions: one `lax.scan` over steps, the denoiser passed in as a function.

A denoiser here is `denoise(x_t, t) -> v`: x_t [B, ...] float, t [B] int32 (training-grid timesteps), v the
v-prediction of the same shape. Classifier-free guidance wraps a conditional model into such a function,
batching the conditional and unconditional branches into one network call.

All noise is an explicit argument (drawn by the caller from a PRNG key, or injected from the PyTorch
reference in parity tests), so a sampler is a deterministic function of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.diffusion.parameterization import v_to_eps, v_to_x0
from audiosr_jax.diffusion.sampler_spec import SamplerSpec

__all__ = ["ddim_timesteps", "DDIMTables", "ddim_tables", "ddim_sample", "classifier_free_guidance", "DDIM"]

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def ddim_timesteps(num_steps: int, num_timesteps: int = 1000) -> np.ndarray:
    """The reference's "uniform" DDIM grid, ascending: t = k·⌊T/S⌋ + 1 (int64 [≈S]).

    For S = 50, T = 1000 that is {1, 21, …, 981}: t = T−1 is never visited. When S does not divide T the
    reference's `range(0, T, T//S)` yields a few more than S steps; we keep that (so results match it) but
    drop a step ≥ T, where the reference would index past its table and crash.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"number of sampling steps must be in [1, {num_timesteps}], got {num_steps}")
    t = np.arange(0, num_timesteps, num_timesteps // num_steps) + 1
    return t[t < num_timesteps]


class DDIMTables(NamedTuple):
    """Per-step constants in *sampling* order (largest t first); every field is [S]."""

    timesteps: np.ndarray  # int32
    sqrt_alpha: np.ndarray  # √ᾱ_t, float32
    sqrt_one_minus_alpha: np.ndarray  # √(1−ᾱ_t)
    alpha_prev: np.ndarray  # ᾱ of the next (smaller) t; ᾱ_0 (not 1) after the last step, as the reference
    sigma: np.ndarray  # η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev), capped so that σ² ≤ 1−ᾱ_prev in float32


def ddim_tables(alphas_cumprod: np.ndarray, num_steps: int, eta: float = 1.0) -> DDIMTables:
    """DDIM constants for `num_steps` steps of a schedule ᾱ (float64 [T]), mirroring the reference's dtypes:
    √ᾱ and √(1−ᾱ) from the float64 table, ᾱ_t/ᾱ_prev/σ from its float32 copy. σ is clamped to the DDIM
    bound σ² ≤ 1 − ᾱ_prev (see `_bound_sigma`), which only η near 1 at t = T−1 reaches."""
    ts = ddim_timesteps(num_steps, len(alphas_cumprod))
    ac32 = np.asarray(alphas_cumprod, np.float32)
    a = ac32[ts].astype(np.float64)
    a_prev = np.concatenate([ac32[:1], ac32[ts[:-1]]]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    sigma = _bound_sigma(np.nan_to_num(sigma), a_prev)
    sqrt_a = np.sqrt(alphas_cumprod)[ts]
    sqrt_1ma = np.sqrt(1.0 - alphas_cumprod)[ts]
    rev = slice(None, None, -1)
    return DDIMTables(ts[rev].astype(np.int32), sqrt_a[rev].astype(np.float32), sqrt_1ma[rev].astype(np.float32),
                      a_prev[rev].astype(np.float32), sigma[rev])


def _bound_sigma(sigma: np.ndarray, a_prev: np.ndarray) -> np.ndarray:
    """σ (float64 [S]) clamped so that the update's √(1 − ᾱ_prev − σ²), taken in float32, is real; float32 [S].

    a_prev: ᾱ_prev (float64 [S], values of the float32 table). At ᾱ_t = 0 (t = T−1 on zero-terminal-SNR schedules)
    with η = 1, σ² = 1 − ᾱ_prev exactly, and float32 rounding of σ alone made 1 − ᾱ_prev − σ² < 0 (NaN). Only
    entries that break the bound change: σ is capped at √(1 − ᾱ_prev), then stepped down by float32 ulps
    until σ² ≤ 1 − ᾱ_prev holds in float32 too; every other entry is the plain float32 cast.
    """
    sigma = np.minimum(sigma, np.sqrt(np.maximum(1.0 - a_prev, 0.0))).astype(np.float32)
    a32, one, zero = a_prev.astype(np.float32), np.float32(1.0), np.float32(0.0)
    over = one - a32 - sigma * sigma < 0
    while over.any():  # a few ulps at most
        sigma[over] = np.nextafter(sigma[over], zero)
        over = one - a32 - sigma * sigma < 0
    return sigma


def ddim_sample(denoise: Denoiser, x_T: jax.Array, noise: jax.Array, tables: DDIMTables) -> jax.Array:
    """Run DDIM from x_T (the start latent, [B, ...]) to x₀.

    noise: [S, B, ...] standard normals, one per step (used scaled by σ; zeros give deterministic DDIM).
    Returns x₀ with x_T's shape and dtype. One `lax.scan`, so it jits to a single loop.
    """
    if noise.shape[0] != len(tables.timesteps) or noise.shape[1:] != x_T.shape:
        raise ValueError(f"noise must be [{len(tables.timesteps)}, *{x_T.shape}], got {noise.shape}")
    batch = x_T.shape[0]

    def step(x, inputs):
        t, sqrt_a, sqrt_1ma, a_prev, sigma, z = inputs
        v = denoise(x, jnp.full((batch,), t, jnp.int32))
        eps = v_to_eps(x, v, sqrt_a, sqrt_1ma)
        x0 = v_to_x0(x, v, sqrt_a, sqrt_1ma)
        # the tables keep σ² ≤ 1 − ᾱ_prev; the max(·, 0) also covers a fused (FMA) evaluation rounding below 0
        dir_var = jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)
        x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(dir_var) * eps + sigma * z
        return x_prev.astype(x.dtype), None

    xs = (jnp.asarray(tables.timesteps), jnp.asarray(tables.sqrt_alpha), jnp.asarray(tables.sqrt_one_minus_alpha),
          jnp.asarray(tables.alpha_prev), jnp.asarray(tables.sigma), noise)
    x0, _ = jax.lax.scan(step, x_T, xs)
    return x0


def classifier_free_guidance(model: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                             cond: jax.Array, uncond: jax.Array, scale: float) -> Denoiser:
    """A denoiser v = v_u + scale·(v_c − v_u) from `model(x_t, t, cond) -> v`.

    cond / uncond: conditioning tensors with a leading batch axis equal to x_t's. Both branches run as one
    model call on a doubled batch. With scale == 1 only the conditional branch runs (as the reference does).
    """
    if scale == 1.0:
        return lambda x, t: model(x, t, cond)

    def denoise(x, t):
        v = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([cond, uncond]))
        v_c, v_u = jnp.split(v, 2)
        return v_u + scale * (v_c - v_u)

    return denoise


def _run_ddim(v: Denoiser, x_T: jax.Array, ac: np.ndarray, num_steps: int, eta: float, noise) -> jax.Array:
    tables = ddim_tables(ac, num_steps, eta)
    if noise is None:
        if eta != 0:
            raise ValueError("DDIM with eta > 0 needs its per-step noise")
        noise = jnp.zeros((len(tables.timesteps),) + x_T.shape, x_T.dtype)
    return ddim_sample(v, x_T, noise, tables)


# the reference's sampler: stochastic with η, on its own uniform grid
DDIM = SamplerSpec("ddim", timesteps=lambda ac, n: ddim_timesteps(n, len(ac))[::-1],
                   noise_steps=lambda n, T: len(ddim_timesteps(n, T)), run=_run_ddim, stochastic=True)
