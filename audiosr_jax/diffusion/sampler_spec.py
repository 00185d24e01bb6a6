"""What a sampler is, to the rest of the code: one `SamplerSpec` per sampler, defined beside its maths and
listed once in `sampling.REGISTRY` (a new sampler is one new file plus one registry line)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

__all__ = ["SamplerSpec"]

# v-denoiser: (x_t [B, ...], t [B] int32) -> v [B, ...]
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """name: the CLI/config name. timesteps(ᾱ float64 [T], num_steps) -> the distinct training timesteps the
    network is evaluated at, descending. noise_steps(num_steps, T) -> length of the per-step noise axis.
    calls(noise_steps) -> network calls of one run. run(v_denoiser, x_T, ᾱ, num_steps, eta, noise) -> x₀, where
    noise is [noise_steps, B, ...] standard normals or None (then zeros; stochastic samplers refuse eta > 0)."""

    name: str
    timesteps: Callable[[np.ndarray, int], np.ndarray]
    noise_steps: Callable[[int, int], int]
    run: Callable[..., jax.Array]
    calls: Callable[[int], int] = lambda n: n
    stochastic: bool = False
