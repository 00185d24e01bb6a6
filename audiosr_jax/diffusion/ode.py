"""Euler and Heun on the probability-flow ODE (Karras et al. 2022, "Elucidating the design space", Alg. 1).

With α = √ᾱ, σ = √(1−ᾱ), the scaled state x̃ = x/α and noise level σ̃ = σ/α (= e^{−λ}), the probability-flow
ODE of x_t = α·x₀ + σ·ε is dx̃/dσ̃ = (x̃ − D)/σ̃, with D = x̂₀ the network's data prediction (from v:
D = α·x − σ·v). One step from σ̃_i to σ̃_{i+1} (Δ = σ̃_{i+1} − σ̃_i < 0):

    Euler:  x̃' = x̃_i + Δ·d_i,                      d_i = (x̃_i − D(x_i, t_i))/σ̃_i
    Heun:   x̃_{i+1} = x̃_i + Δ·(d_i + d')/2,        d'  = (x̃' − D(x', t_{i+1}))/σ̃_{i+1}

Back in x, Euler reads x_{i+1} = (σ_{i+1}/σ_i)·x_i + (α_{i+1} − σ_{i+1}·α_i/σ_i)·D_i: exactly DDIM(η=0)
(Song et al. 2021) and the first-order step of `dpm_solver` — they are one method. Heun is second order and
costs two network calls per step.

Conventions are those of `dpm_solver` (see its module docstring): the grid is `sampler_timesteps(num_steps,
ᾱ, spacing)` (default uniform in log-SNR from the largest t with ᾱ > 0 down to t = 1), x_T is the state at the
first timestep, and the output is the data prediction D of the last call (the σ → 0 limit of an Euler step,
which is also where Heun takes its last, Euler, step). So `num_steps` grid points cost num_steps network calls
for Euler and 2·num_steps − 1 for Heun. Heun is undefined from ᾱ = 0 (σ̃ = ∞) and refuses such a grid; Euler
accepts a first timestep with ᾱ = 0 (its α/σ form has the limit x₁ = σ₁·x_T + α₁·D).

Every network call k is one row of a table: D_k = D(x_k, t_k), then
    x_{k+1} = cx·x_k + cd·D_k + cb·x_b + ce·D_b,
where (x_b, D_b) are the state and prediction of the last step start (saved where `save` is 1). Euler rows are
(ratio, coef, 0, 0); a Heun step is a start row (the Euler step, saving its base) and a correction row. The
device runs one `lax.scan` with one network call per iteration, so the UNet appears once in the program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.diffusion.dpm_solver import grid_alphas, sampler_timesteps
from audiosr_jax.diffusion.sampler_spec import SamplerSpec

__all__ = ["ODETables", "ode_tables", "ode_sample", "euler_sample", "heun_sample", "METHODS", "EULER", "HEUN"]

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]

METHODS = ("euler", "heun")


class ODETables(NamedTuple):
    """One row per network call, in call order; float64 except `timesteps` (int32 [K])."""

    timesteps: np.ndarray
    alpha: np.ndarray  # √ᾱ_t [K]
    sigma: np.ndarray  # √(1−ᾱ_t) [K]
    coef: np.ndarray  # [K, 4]: cx, cd, cb, ce
    save: np.ndarray  # [K]: 1 where (x_k, D_k) becomes the base of the step


def ode_tables(alphas_cumprod: np.ndarray, timesteps: np.ndarray, method: str = "heun") -> ODETables:
    """Call tables for `ode_sample` on the given strictly descending training timesteps ([S]).

    method: "euler" (S calls) or "heun" (2S − 1 calls: two per step, one at the last timestep).
    """
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose from {METHODS}")
    ts, a = grid_alphas(alphas_cumprod, timesteps)
    if method == "heun" and len(ts) > 1 and a[0] <= 0:
        raise ValueError("Heun is undefined from alpha_cumprod = 0 (infinite noise level); start the grid at "
                         "a timestep with alpha_cumprod > 0 or use euler")
    alpha, sigma = np.sqrt(a), np.sqrt(1.0 - a)
    rows = []  # (t index, cx, cd, cb, ce, save)
    for i in range(len(ts) - 1):
        ratio = sigma[i + 1] / sigma[i]
        euler = (ratio, alpha[i + 1] - ratio * alpha[i], 0.0, 0.0)
        if method == "euler":
            rows.append((i, *euler, 0.0))
            continue
        rows.append((i, *euler, 1.0))
        s_i, s_n = sigma[i] / alpha[i], sigma[i + 1] / alpha[i + 1]  # σ̃
        delta = s_n - s_i
        # x_{i+1} = α_{i+1}·[x̃_i + Δ/2·(x̃_i − D_i)/σ̃_i + Δ/2·(x'/α_{i+1} − D')/σ̃_{i+1}]
        cb = alpha[i + 1] / alpha[i] * (1.0 + delta / (2.0 * s_i))
        ce = -alpha[i + 1] * delta / (2.0 * s_i)
        cx = delta / (2.0 * s_n)
        cd = -alpha[i + 1] * delta / (2.0 * s_n)
        rows.append((i + 1, cx, cd, cb, ce, 0.0))
    rows.append((len(ts) - 1, 0.0, 1.0, 0.0, 0.0, 0.0))  # the output: D of the last call
    idx = np.array([r[0] for r in rows])
    coef = np.array([r[1:5] for r in rows], np.float64)
    save = np.array([r[5] for r in rows], np.float64)
    return ODETables(ts[idx].astype(np.int32), alpha[idx], sigma[idx], coef, save)


def ode_sample(denoise: Denoiser, x_T: jax.Array, tables: ODETables) -> jax.Array:
    """Run an `ode_tables` program from x_T ([B, ...], the state at the first timestep) to x̂₀ (same shape/dtype).

    denoise: `(x_t [B, ...], t [B] int32) -> v`. The state is carried in float32 (as `dpm_solver`).
    """
    batch = x_T.shape[0]
    dtype = x_T.dtype
    state = jnp.promote_types(dtype, jnp.float32)
    x0 = x_T.astype(state)

    def step(carry, inputs):
        x, x_b, d_b = carry
        t, a, s, c, save = inputs
        v = denoise(x.astype(dtype), jnp.full((batch,), t, jnp.int32)).astype(state)
        d = a * x - s * v  # data prediction x̂₀
        x_next = c[0] * x + c[1] * d + c[2] * x_b + c[3] * d_b
        keep = save > 0
        return (x_next, jnp.where(keep, x, x_b), jnp.where(keep, d, d_b)), None

    xs = (jnp.asarray(tables.timesteps, jnp.int32),) + tuple(jnp.asarray(f, state) for f in tables[1:])
    (out, _, _), _ = jax.lax.scan(step, (x0, x0, jnp.zeros_like(x0)), xs)
    return out.astype(dtype)


def euler_sample(denoise: Denoiser, x_T: jax.Array, alphas_cumprod: np.ndarray, num_steps: int,
                 spacing: str = "logsnr") -> jax.Array:
    """Euler on the probability-flow ODE (= DDIM η=0): `num_steps` network calls on
    `sampler_timesteps(num_steps, ᾱ, spacing)`; returns x̂₀ of the last call ([B, ...], x_T's dtype)."""
    ts = sampler_timesteps(num_steps, alphas_cumprod, spacing)
    return ode_sample(denoise, x_T, ode_tables(alphas_cumprod, ts, "euler"))


def heun_sample(denoise: Denoiser, x_T: jax.Array, alphas_cumprod: np.ndarray, num_steps: int,
                spacing: str = "logsnr") -> jax.Array:
    """Heun (2nd order) on the probability-flow ODE over the same grid as `euler_sample`:
    2·num_steps − 1 network calls; returns x̂₀ of the last call ([B, ...], x_T's dtype)."""
    ts = sampler_timesteps(num_steps, alphas_cumprod, spacing)
    return ode_sample(denoise, x_T, ode_tables(alphas_cumprod, ts, "heun"))


def _ode_spec(method: str, calls) -> SamplerSpec:
    def run(v, x_T, ac, num_steps, eta, noise):
        return ode_sample(v, x_T, ode_tables(ac, sampler_timesteps(num_steps, ac), method))

    return SamplerSpec(method, timesteps=lambda ac, n: sampler_timesteps(n, ac), noise_steps=lambda n, T: int(n),
                       run=run, calls=calls)


EULER = _ode_spec("euler", lambda n: n)  # = DDIM with η = 0 on the same grid
HEUN = _ode_spec("heun", lambda n: 2 * n - 1)  # second order: two network calls per step but the last
