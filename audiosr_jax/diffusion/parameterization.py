"""Conversions between what a network predicts and (x₀, ε, v) for a noisy x_t = √ᾱ·x₀ + √(1−ᾱ)·ε.

Parameterisations: "eps" (ε, Ho et al. 2020), "v" (v = √ᾱ·ε − √(1−ᾱ)·x₀, Salimans & Ho 2022; AudioSR) and
"x0" (the clean sample). `sqrt_a` = √ᾱ_t and `sqrt_1ma` = √(1−ᾱ_t) broadcast against x (shape [B, 1, 1, 1]
or scalars). Singular points: recovering x₀ from ε divides by √ᾱ (undefined at ᾱ = 0, zero terminal SNR);
recovering ε from x₀ divides by √(1−ᾱ) (undefined at ᾱ = 1, which no schedule reaches); v is defined everywhere.
"""

from __future__ import annotations

__all__ = ["PARAMETERIZATIONS", "v_to_eps", "v_to_x0", "v_target", "eps_to_x0", "x0_to_eps", "to_x0_eps", "to_v",
           "from_x0_eps", "check_parameterization"]

PARAMETERIZATIONS = ("eps", "v", "x0")


def check_parameterization(parameterization: str) -> str:
    """The name itself, or ValueError if it is not one of PARAMETERIZATIONS."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose from {PARAMETERIZATIONS}")
    return parameterization


def v_to_eps(x_t, v, sqrt_a, sqrt_1ma):
    """ε = √ᾱ·v + √(1−ᾱ)·x_t."""
    return sqrt_a * v + sqrt_1ma * x_t


def v_to_x0(x_t, v, sqrt_a, sqrt_1ma):
    """x₀ = √ᾱ·x_t − √(1−ᾱ)·v."""
    return sqrt_a * x_t - sqrt_1ma * v


def v_target(x0, eps, sqrt_a, sqrt_1ma):
    """Training target v = √ᾱ·ε − √(1−ᾱ)·x₀."""
    return sqrt_a * eps - sqrt_1ma * x0


def eps_to_x0(x_t, eps, sqrt_a, sqrt_1ma):
    """x₀ = (x_t − √(1−ᾱ)·ε)/√ᾱ (undefined at ᾱ = 0)."""
    return (x_t - sqrt_1ma * eps) / sqrt_a


def x0_to_eps(x_t, x0, sqrt_a, sqrt_1ma):
    """ε = (x_t − √ᾱ·x₀)/√(1−ᾱ) (undefined at ᾱ = 1)."""
    return (x_t - sqrt_a * x0) / sqrt_1ma


def from_x0_eps(parameterization: str, x0, eps, sqrt_a, sqrt_1ma):
    """What a `parameterization` network should output for (x₀, ε) at ᾱ: its training target."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return eps
    if parameterization == "v":
        return v_target(x0, eps, sqrt_a, sqrt_1ma)
    return x0


def to_x0_eps(parameterization: str, x_t, pred, sqrt_a, sqrt_1ma):
    """(x̂₀, ε̂) from a `parameterization` network's output `pred` at x_t."""
    check_parameterization(parameterization)
    if parameterization == "v":
        return v_to_x0(x_t, pred, sqrt_a, sqrt_1ma), v_to_eps(x_t, pred, sqrt_a, sqrt_1ma)
    if parameterization == "eps":
        return eps_to_x0(x_t, pred, sqrt_a, sqrt_1ma), pred
    return pred, x0_to_eps(x_t, pred, sqrt_a, sqrt_1ma)


def to_v(parameterization: str, x_t, pred, sqrt_a, sqrt_1ma):
    """v̂ from a `parameterization` network's output `pred` at x_t (`pred` itself for "v").

    ε → v: (ε − √(1−ᾱ)·x_t)/√ᾱ (undefined at ᾱ = 0); x₀ → v: (√ᾱ·x_t − x₀)/√(1−ᾱ). Both are affine in `pred`,
    so guidance applied to the network's own output equals guidance applied to v.
    """
    check_parameterization(parameterization)
    if parameterization == "v":
        return pred
    if parameterization == "eps":
        return (pred - sqrt_1ma * x_t) / sqrt_a
    return (sqrt_a * x_t - pred) / sqrt_1ma
