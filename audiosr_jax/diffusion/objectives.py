"""Training objectives: the regression target of each parameterisation and the per-timestep loss weights.

For x_t = √ᾱ·x₀ + √(1−ᾱ)·ε the network predicts ε, v = √ᾱ·ε − √(1−ᾱ)·x₀ (AudioSR) or x₀. ``uniform`` is the
plain MSE on the network's own target (AudioSR: MSE on v). The weightings are written as factors on that
MSE, with SNR = ᾱ/(1−ᾱ):

* ``min_snr`` (Hang et al. 2023, γ = 5): the x₀-space weight min(SNR, γ), i.e. min(SNR, γ)/SNR on the ε
  loss, min(SNR, γ)/(SNR + 1) on the v loss, min(SNR, γ) on the x₀ loss;
* ``snr_plus_one``: x₀-space weight SNR + 1 (the v loss), i.e. (SNR + 1)/SNR on ε, 1 on v, SNR + 1 on x₀.

Zero terminal SNR (ᾱ = 0) is finite everywhere: the ε weights take their SNR → 0 limit where needed.
"""

from __future__ import annotations

import jax.numpy as jnp

from audiosr_jax.diffusion import parameterization as pz

PARAMETERIZATIONS = pz.PARAMETERIZATIONS
WEIGHTINGS = ("uniform", "min_snr", "snr_plus_one")


def training_target(parameterization: str, x0, eps, sqrt_a, sqrt_1ma):
    """What the network should output for (x₀, ε) at ᾱ (same shape as x₀): `parameterization.from_x0_eps`."""
    return pz.from_x0_eps(parameterization, x0, eps, sqrt_a, sqrt_1ma)


def loss_weight(weighting: str, parameterization: str, alpha_bar, gamma: float = 5.0):
    """Weight [B] of each example's MSE given ᾱ_t [B]."""
    a = jnp.asarray(alpha_bar, jnp.float32)
    snr = a / jnp.maximum(1.0 - a, 1e-20)
    if weighting == "uniform":
        return jnp.ones_like(a)
    if weighting == "min_snr":
        x0_w = jnp.minimum(snr, gamma)
        eps_w = jnp.where(snr < gamma, 1.0, gamma / jnp.maximum(snr, 1e-20))
    elif weighting == "snr_plus_one":
        x0_w = snr + 1.0
        eps_w = 1.0 + 1.0 / jnp.maximum(snr, 1e-6)  # unbounded as SNR -> 0; clipped at 1e6
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose from {WEIGHTINGS}")
    return {"eps": eps_w, "v": x0_w / (snr + 1.0), "x0": x0_w}[parameterization]


def prediction_to_x0_eps(parameterization: str, x_t, pred, sqrt_a, sqrt_1ma):
    """(x̂₀, ε̂) from the network output: `parameterization.to_x0_eps`."""
    return pz.to_x0_eps(parameterization, x_t, pred, sqrt_a, sqrt_1ma)


def diffusion_loss(pred, x0, eps, alpha_bar, parameterization: str = "v", weighting: str = "uniform",
                   gamma: float = 5.0):
    """Weighted MSE: mean over all non-batch axes, weighted per example, mean over the batch.

    pred, x0, eps: [B, ...]; alpha_bar: ᾱ_t [B]. Returns a float32 scalar.
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = jnp.asarray(alpha_bar, jnp.float32).reshape(shape)
    target = training_target(parameterization, x0, eps, jnp.sqrt(a), jnp.sqrt(1.0 - a))
    per_example = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=tuple(range(1, x0.ndim)))
    return jnp.mean(loss_weight(weighting, parameterization, alpha_bar, gamma) * per_example)
