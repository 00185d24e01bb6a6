"""Flow-ODE samplers (Euler, Heun, midpoint) against exact velocity fields.

Point mass: data = x₀ fixed; the exact velocity of the straight-line flow is u(x, t) = (x − x₀)/t, whose
trajectories are straight lines, so every sampler lands on x₀ exactly from any start.

Gaussian law: data x₀ ~ N(μ, s²) and start x₁ ~ N(c, σ²) independent per dimension (flow: c = 0, σ = 1;
bridge: c the condition, σ = σ_b). x_t = (1 − t)·x₀ + t·x₁ is Gaussian with mean m_t = (1 − t)·μ + t·c and
variance v_t = (1 − t)²s² + t²σ², and u(x, t) = E[x₁ − x₀ | x_t = x] = (c − μ) + (t·σ² − (1 − t)·s²)/v_t·(x − m_t).
The ODE keeps the standardised value (x_t − m_t)/√v_t constant, so the exact solution from x₁ is
μ + s·(x₁ − c)/σ at t = 0. Every sampler is affine per dimension on this field, so with starts standardised
exactly the output's mean and std are μ and s up to the discretisation error alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.diffusion import flow, flow_samplers, sampling
from audiosr_jax.diffusion.flow_samplers import (
    euler_sample,
    heun_sample,
    midpoint_sample,
)

SAMPLERS = {"euler": euler_sample, "heun": heun_sample, "midpoint": midpoint_sample}
MU = np.array([0.7, -0.3, 1.2, 0.0, -1.0, 0.4])
STD = np.array([0.2, 0.35, 0.5, 0.75, 1.0, 1.5])


def point_mass_velocity(x0):
    x0 = jnp.asarray(x0, jnp.float32)

    def u(x, t):
        return (x - x0) / t.reshape((-1,) + (1,) * (x.ndim - 1))

    return u


def gaussian_velocity(mu, std, c=0.0, sigma=1.0):
    """The exact marginal velocity for x₀ ~ N(mu, std²), x₁ ~ N(c, sigma²) per dimension (last axis)."""
    mu, var = jnp.asarray(mu, jnp.float32), jnp.asarray(np.square(std), jnp.float32)
    c, s2 = jnp.asarray(c, jnp.float32), jnp.float32(sigma ** 2)

    def u(x, t):
        t = t.reshape((-1,) + (1,) * (x.ndim - 1))
        m = (1 - t) * mu + t * c
        v = (1 - t) ** 2 * var + t ** 2 * s2
        return (c - mu) + (t * s2 - (1 - t) * var) / v * (x - m)

    return u


def exact_end(x1, mu, std, c=0.0, sigma=1.0):
    return np.asarray(mu) + np.asarray(std) * (np.asarray(x1, np.float64) - c) / sigma


def standardised_normals(shape, seed):
    """Normals whose sample mean is exactly 0 and std exactly 1 per column."""
    z = np.random.default_rng(seed).standard_normal(shape)
    z = (z - z.mean(0)) / z.std(0)
    return jnp.asarray(z, jnp.float32)


def rms(a, b):
    return float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64)))))


# ------------------------------------------------------------------------------------------------ grid / tables


def test_sampling_grid_and_shift():
    np.testing.assert_allclose(flow.sampling_grid(4), [1.0, 0.75, 0.5, 0.25, 0.0], atol=0)
    g = flow.sampling_grid(2, shift=3.0)
    assert g[0] == 1.0 and g[-1] == 0.0
    np.testing.assert_allclose(g[1], 3.0 / 4.0, rtol=1e-15)  # 0.5 ↦ s/(1 + s)
    assert np.all(np.diff(flow.sampling_grid(50, shift=5.0)) < 0)
    for bad in ((0, 1.0), (4, 0.0), (4, -1.0)):
        with pytest.raises(ValueError):
            flow.sampling_grid(*bad)


@pytest.mark.parametrize("method,calls", [("euler", 5), ("heun", 9), ("midpoint", 10)])
def test_velocity_called_at_the_documented_times(method, calls):
    seen = []

    def u(x, t):
        jax.debug.callback(lambda tt: seen.append(float(tt[0])), t, ordered=True)
        return x

    jax.block_until_ready(SAMPLERS[method](u, jnp.ones((2, 3)), 5, shift=2.0))
    jax.effects_barrier()
    g = flow.sampling_grid(5, 2.0)
    expected = {"euler": list(g[:-1]),
                "heun": [g[0]] + [t for t in g[1:-1] for _ in range(2)],  # t_i, then t_{i+1} (correct), restart
                "midpoint": [t for a, b in zip(g[:-1], g[1:]) for t in (a, (a + b) / 2)]}[method]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    assert len(seen) == calls == flow_samplers.num_calls(method, 5) == sampling.num_network_calls(method, 5)


def test_unknown_sampler_is_refused_naming_the_flow_samplers():
    with pytest.raises(ValueError, match=r"\('euler', 'heun', 'midpoint'\)"):
        flow_samplers.sample("ddim", lambda x, t: x, jnp.ones((1, 2)), 4)


# ------------------------------------------------------------------------------------------------ exact fields


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps,shift", [(1, 1.0), (2, 1.0), (5, 3.0)])
def test_point_mass_is_recovered_from_any_start(name, steps, shift):
    x0 = np.array([[0.3, -1.2, 2.0, 0.0]], np.float32)
    x1 = 5.0 * jax.random.normal(jax.random.key(0), (16, 4))
    out = SAMPLERS[name](point_mass_velocity(x0), x1, steps, shift=shift)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(x0, (16, 4)), atol=2e-5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_law_is_recovered(name):
    z = standardised_normals((4096, len(MU)), 1)
    out = np.asarray(SAMPLERS[name](gaussian_velocity(MU, STD), z, 64), np.float64)
    tol = 0.05 if name == "euler" else 5e-3  # first order: a few % at 64 steps (the narrowest law is the stiffest)
    assert np.all(np.abs(out.mean(0) - MU) <= tol * STD), out.mean(0)
    np.testing.assert_allclose(out.std(0), STD, rtol=tol)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_bridge_law_from_the_condition(name):
    c = np.array([0.5, -0.5, 1.0, 0.2, -0.1, 0.0], np.float32)
    sigma_b = 0.5
    x1 = flow.bridge_start(jnp.asarray(c), standardised_normals((4096, len(MU)), 2), sigma_b)
    out = np.asarray(SAMPLERS[name](gaussian_velocity(MU, STD, c, sigma_b), x1, 32), np.float64)
    tol = 0.06 if name == "euler" else 3e-3
    assert np.all(np.abs(out.mean(0) - MU) <= tol * STD), out.mean(0)
    np.testing.assert_allclose(out.std(0), STD, rtol=tol)
    np.testing.assert_allclose(out, exact_end(x1, MU, STD, c, sigma_b), atol=5 * tol * STD.max())


def _slopes(u, x1, exact):
    """Slope of log(rms error against the exact solution) over log(S), S = 4, 8, 16, 32, per sampler."""
    steps = np.array([4, 8, 16, 32])
    return {name: np.polyfit(np.log(steps), np.log([rms(fn(u, x1, int(s)), exact) for s in steps]), 1)[0]
            for name, fn in SAMPLERS.items()}


def test_orders_of_convergence():
    # dx/dt = x² (nonlinear; exact x(0) = x₁/(1 + x₁)): Euler first order, Heun and midpoint second
    x1 = jnp.linspace(0.2, 1.5, 64)[:, None]
    slope = _slopes(lambda x, t: x * x, x1, np.asarray(x1, np.float64) / (1 + np.asarray(x1, np.float64)))
    assert -1.2 < slope["euler"] < -0.9, slope
    assert -2.4 < slope["heun"] < -1.8, slope
    assert -2.4 < slope["midpoint"] < -1.8, slope
    # the Gaussian law's field (affine in x): the same, except that midpoint's h² error term cancels there
    x1 = standardised_normals((256, len(MU)), 3)
    slope = _slopes(gaussian_velocity(MU, STD), x1, exact_end(x1, MU, STD))
    assert -1.2 < slope["euler"] < -0.8, slope
    assert -2.3 < slope["heun"] < -1.8, slope
    assert slope["midpoint"] < -1.8, slope


def test_jit_and_bf16_state_is_float32():
    u = gaussian_velocity(MU, STD)
    x1 = standardised_normals((8, len(MU)), 4)
    out32 = jax.jit(lambda x: heun_sample(u, x, 8))(x1)
    out16 = heun_sample(u, x1.astype(jnp.bfloat16), 8)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32), atol=0.05)
