"""Conversions between the network output and (x₀, ε) for a noisy x_t = √ᾱ·x₀ + √(1−ᾱ)·ε.

`sqrt_a` = √ᾱ_t and `sqrt_1ma` = √(1−ᾱ_t) broadcast against x (shape [B, 1, 1, 1] or scalars).
"""

from __future__ import annotations

__all__ = ["v_to_eps", "v_to_x0", "v_target", "eps_to_x0", "x0_to_eps"]


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
