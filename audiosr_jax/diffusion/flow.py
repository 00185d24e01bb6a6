"""Rectified flow / conditional flow matching, and a bridge from the condition latent: the training maths.

Conventions (t ∈ [0, 1]; t = 0 is data, t = 1 is the start point of sampling):

* ``flow``: x_t = (1 − t)·x₀ + t·ε with ε ~ N(0, I); the network predicts the velocity u = ε − x₀, and the ODE
  dx/dt = u(x_t, t) runs from t = 1 (pure noise) to t = 0 (data) (Liu et al. 2022, Lipman et al. 2022).
* ``bridge``: the start point is x₁ = c + σ_b·ε, with c the *scaled* condition latent (the low-pass input's
  latent times scale_factor, the tensor the UNet also receives as its condition) and σ_b = ``bridge_noise``;
  x_t = (1 − t)·x₀ + t·x₁, target u = x₁ − x₀. Sampling then starts from the low-resolution latent instead of
  pure noise; the samplers are the same.

Both are `interpolate(x0, x1, t)` and `velocity_target(x0, x1)` with x₁ = ε (flow) or `bridge_start` (bridge).
The loss is the MSE on u (`flow_loss`, optionally over a mask such as the LDM stage's band mask).

Training times: t = sigmoid(m + s·n), n ~ N(0, 1) ("logit_normal", SD3, Esser et al. 2024) or t ~ U(0, 1)
("uniform"), then the SD3 time shift t' = k·t / (1 + (k − 1)·t) (k > 1 moves mass towards noise). The sampling
grid is the same shift applied to a uniform grid from 1 to 0 (`sampling_grid`).

The UNet's time input is t·num_timesteps (a float, e.g. t·1000; `network_time`): its sinusoidal embedding
was designed for (and the released network trained on) integer steps in [0, 1000), so this keeps its
frequency range.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["OBJECTIVES", "TIME_SAMPLINGS", "check_objective", "check_flow_settings", "time_shift", "sample_time",
           "interpolate", "velocity_target", "bridge_start", "flow_loss", "sampling_grid", "network_time"]

OBJECTIVES = ("diffusion", "flow", "bridge")
TIME_SAMPLINGS = ("logit_normal", "uniform")


def check_objective(objective: str) -> str:
    """The name itself, or ValueError if it is not one of OBJECTIVES."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    return objective


def check_flow_settings(time_sampling: str, logit_std: float, time_shift_: float, bridge_noise: float,
                        logit_mean: float = 0.0) -> None:
    """ValueError for a setting no flow/bridge run can use."""
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"unknown flow_time_sampling {time_sampling!r}; choose from {TIME_SAMPLINGS}")
    if not math.isfinite(logit_mean):
        raise ValueError(f"flow_logit_mean must be finite, got {logit_mean}")
    if not (math.isfinite(logit_std) and logit_std > 0):
        raise ValueError(f"flow_logit_std must be > 0, got {logit_std}")
    if not (math.isfinite(time_shift_) and time_shift_ > 0):
        raise ValueError(f"flow_time_shift must be > 0, got {time_shift_}")
    if not (math.isfinite(bridge_noise) and bridge_noise >= 0):
        raise ValueError(f"bridge_noise must be >= 0, got {bridge_noise}")


def time_shift(t, shift: float):
    """SD3's shift t' = s·t / (1 + (s − 1)·t) (any shape, numpy or JAX); s = 1 is the identity, 0 ↦ 0, 1 ↦ 1."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(key: jax.Array, batch: int, sampling: str = "logit_normal", logit_mean: float = 0.0,
                logit_std: float = 1.0, shift: float = 1.0) -> jax.Array:
    """Training times, float32 [batch] in [0, 1]: logit-normal (sigmoid(m + s·n)) or uniform, then `time_shift`."""
    if sampling == "logit_normal":
        t = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (batch,), jnp.float32))
    elif sampling == "uniform":
        t = jax.random.uniform(key, (batch,), jnp.float32)
    else:
        raise ValueError(f"unknown flow_time_sampling {sampling!r}; choose from {TIME_SAMPLINGS}")
    return time_shift(t, shift)


def _per_example(t, ndim: int):
    return jnp.asarray(t, jnp.float32).reshape((-1,) + (1,) * (ndim - 1))


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 − t)·x₀ + t·x₁. x0, x1: [B, ...]; t: [B]. Returns [B, ...] float32."""
    tt = _per_example(t, x0.ndim)
    return (1.0 - tt) * x0.astype(jnp.float32) + tt * x1.astype(jnp.float32)


def velocity_target(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """The regression target u = x₁ − x₀ ([B, ...] float32); the ODE dx/dt = u carries x₀ (t = 0) to x₁ (t = 1)."""
    return x1.astype(jnp.float32) - x0.astype(jnp.float32)


def bridge_start(cond_scaled: jax.Array, eps: jax.Array, bridge_noise: float) -> jax.Array:
    """The bridge's start point x₁ = c + σ_b·ε ([B, ...]); cond_scaled = condition latent × scale_factor."""
    return cond_scaled + bridge_noise * eps


def flow_loss(pred: jax.Array, x0: jax.Array, x1: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """MSE of the predicted velocity ([B, ...]) against u = x₁ − x₀: per example the mean over the entries where
    `mask` (broadcast to x0's shape; None: all) is 1, then the mean over the batch. Float32 scalar. Masked
    entries change neither the loss nor its gradient."""
    err = jnp.square(pred.astype(jnp.float32) - velocity_target(x0, x1))
    axes = tuple(range(1, x0.ndim))
    if mask is None:
        return jnp.mean(jnp.mean(err, axis=axes))
    mask = jnp.broadcast_to(mask, x0.shape)
    per_example = jnp.sum(jnp.where(mask > 0, err, 0.0), axis=axes) / jnp.maximum(jnp.sum(mask, axis=axes), 1.0)
    return jnp.mean(per_example)


def sampling_grid(num_steps: int, shift: float = 1.0) -> np.ndarray:
    """The sampling times, float64 [num_steps + 1], strictly descending from 1 to exactly 0: `time_shift` of
    the uniform grid 1 − i/num_steps."""
    if int(num_steps) < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {num_steps}")
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"flow_time_shift must be > 0, got {shift}")
    t = time_shift(np.linspace(1.0, 0.0, int(num_steps) + 1), float(shift))
    t[0], t[-1] = 1.0, 0.0  # exact ends whatever the shift's rounding
    return t


def network_time(t: jax.Array, num_timesteps: int) -> jax.Array:
    """The UNet's time input for flow time t ([B]): t·num_timesteps as float32, the released embedding's range."""
    return jnp.asarray(t, jnp.float32) * jnp.float32(num_timesteps)
