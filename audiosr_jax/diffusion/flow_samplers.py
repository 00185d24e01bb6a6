"""Euler, Heun and midpoint on the flow ODE dx/dt = u(x, t), from t = 1 (start point x₁) to t = 0 (data).

Conventions of `flow` (x_t = (1 − t)·x₀ + t·x₁, u = x₁ − x₀). The grid is `flow.sampling_grid(S, shift)`:
t_0 = 1 > t_1 > … > t_S = 0 (S steps, h_i = t_{i+1} − t_i < 0):

    Euler:     x_{i+1} = x_i + h·u(x_i, t_i)                                             S calls
    Heun:      x' = x_i + h·u_i;  x_{i+1} = x_i + h/2·(u_i + u(x', t_{i+1}))              2S − 1 calls
               (the last step, to t = 0, is Euler: the velocity of a sharp data law is singular there)
    midpoint:  x_m = x_i + h/2·u_i;  x_{i+1} = x_i + h·u(x_m, t_i + h/2)                  2S calls

Heun and midpoint are second order, Euler first. Every network call k is one row of a table:
u_k = u(x_k, t_k), then x_{k+1} = cx·x_k + cu·u_k + cb·x_b + cv·u_b, where (x_b, u_b) are the state and
velocity at the last step start (saved where `save` is 1). The device runs one `lax.scan` with one velocity
call per iteration, so the network appears once in the program (as `ode`).

A velocity function is `u(x_t [B, ...], t [B] float32 in [0, 1]) -> [B, ...]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.diffusion.flow import sampling_grid

__all__ = ["METHODS", "FlowTables", "flow_tables", "flow_sample", "euler_sample", "heun_sample", "midpoint_sample",
           "num_calls", "check_method", "sample"]

Velocity = Callable[[jax.Array, jax.Array], jax.Array]

METHODS = ("euler", "heun", "midpoint")


class FlowTables(NamedTuple):
    """One row per velocity call, in call order (float64)."""

    t: np.ndarray  # [K] the time of the call
    coef: np.ndarray  # [K, 4]: cx, cu, cb, cv
    save: np.ndarray  # [K]: 1 where (x_k, u_k) becomes the base of the step


def check_method(method: str) -> str:
    """The name itself, or ValueError naming the flow samplers."""
    if method not in METHODS:
        raise ValueError(f"sampler {method!r} is not a flow-ODE sampler; a flow/bridge-objective model samples "
                         f"with one of {METHODS}")
    return method


def num_calls(method: str, num_steps: int) -> int:
    """Velocity calls of one run of `num_steps` steps: Euler S, Heun 2S − 1, midpoint 2S."""
    check_method(method)
    n = int(num_steps)
    return {"euler": n, "heun": 2 * n - 1, "midpoint": 2 * n}[method]


def flow_tables(grid: np.ndarray, method: str = "heun") -> FlowTables:
    """Call tables for `flow_sample` on a strictly descending time grid ([S + 1], from the start time to the end)."""
    check_method(method)
    ts = np.asarray(grid, np.float64)
    if ts.ndim != 1 or len(ts) < 2 or not np.all(np.diff(ts) < 0):
        raise ValueError(f"the flow grid must be strictly descending with at least 2 points, got {ts}")
    rows = []  # (t, cx, cu, cb, cv, save)
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        h = t_next - t
        if method == "euler" or (method == "heun" and t_next == 0.0):
            rows.append((t, 1.0, h, 0.0, 0.0, 0.0))
        elif method == "heun":
            rows.append((t, 1.0, h, 0.0, 0.0, 1.0))  # x' (the Euler predictor), base saved
            rows.append((t_next, 0.0, h / 2, 1.0, h / 2, 0.0))  # x_b + h/2·(u_b + u')
        else:
            rows.append((t, 1.0, h / 2, 0.0, 0.0, 1.0))  # x_m, base saved
            rows.append((t + h / 2, 0.0, h, 1.0, 0.0, 0.0))  # x_b + h·u_m
    arr = np.array(rows, np.float64)
    return FlowTables(arr[:, 0], arr[:, 1:5], arr[:, 5])


def flow_sample(velocity: Velocity, x1: jax.Array, tables: FlowTables) -> jax.Array:
    """Run a `flow_tables` program from the start point x1 ([B, ...], the state at the grid's first time) to the
    state at its last time (same shape/dtype). The state is carried in float32 (at least)."""
    batch = x1.shape[0]
    dtype = x1.dtype
    state = jnp.promote_types(dtype, jnp.float32)
    x0 = x1.astype(state)

    def step(carry, inputs):
        x, x_b, u_b = carry
        t, c, save = inputs
        u = velocity(x.astype(dtype), jnp.full((batch,), t, state)).astype(state)
        x_next = c[0] * x + c[1] * u + c[2] * x_b + c[3] * u_b
        keep = save > 0
        return (x_next, jnp.where(keep, x, x_b), jnp.where(keep, u, u_b)), None

    xs = tuple(jnp.asarray(f, state) for f in tables)
    (out, _, _), _ = jax.lax.scan(step, (x0, x0, jnp.zeros_like(x0)), xs)
    return out.astype(dtype)


def sample(method: str, velocity: Velocity, x1: jax.Array, num_steps: int, shift: float = 1.0) -> jax.Array:
    """`method` over `flow.sampling_grid(num_steps, shift)` from x1 ([B, ...]) to t = 0; returns [B, ...]."""
    return flow_sample(velocity, x1, flow_tables(sampling_grid(num_steps, shift), check_method(method)))


def euler_sample(velocity: Velocity, x1: jax.Array, num_steps: int, shift: float = 1.0) -> jax.Array:
    """Euler (1st order, `num_steps` calls) from t = 1 to 0; x1, result: [B, ...]."""
    return sample("euler", velocity, x1, num_steps, shift)


def heun_sample(velocity: Velocity, x1: jax.Array, num_steps: int, shift: float = 1.0) -> jax.Array:
    """Heun (2nd order, 2·num_steps − 1 calls; last step Euler) from t = 1 to 0; x1, result: [B, ...]."""
    return sample("heun", velocity, x1, num_steps, shift)


def midpoint_sample(velocity: Velocity, x1: jax.Array, num_steps: int, shift: float = 1.0) -> jax.Array:
    """Explicit midpoint (2nd order, 2·num_steps calls) from t = 1 to 0; x1, result: [B, ...]."""
    return sample("midpoint", velocity, x1, num_steps, shift)
