"""Deterministic synthetic weights and test audio, identical in any numpy >= 1.17 environment.

Parity tests need the *same* random weights on the PyTorch reference side (its own venv, numpy 1.23) and on
the JAX side, without shipping hundreds of MB of tensors. Each tensor is drawn from its own PCG64 stream
seeded by (seed, crc32(name)), so the value of a key depends only on its name, shape and the seed, never on
iteration order. This module imports numpy alone so the reference environment can import it too.

Weights are "perturbed" as the parity spec asks: no zero-initialised layer stays zero, every norm's
scale is 1 ± 0.1 and its bias ±0.1, so a mis-mapped norm or a forgotten layer shows up as a large error.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["synthetic_tensor", "synthetic_state_dict", "parity_clip", "fingerprint"]


def synthetic_tensor(name: str, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """One float32 tensor for the parameter `name` (a PyTorch state_dict key) of the given shape.

    Rules (by shape and name): 1-D norm weights 1 + 0.1·N(0,1); 1-D norm biases and other biases 0.1·N(0,1);
    weights of rank ≥ 2 N(0,1)/sqrt(fan_in) with fan_in = prod(shape[1:]) (for ConvTranspose1d, whose torch
    layout is [in, out, k], fan_in = in·k / 2 keeps activations of the same order).
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
    shape = tuple(int(s) for s in shape)
    x = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) <= 1:
        if name.endswith(".weight"):  # every 1-D weight is a GroupNorm/LayerNorm scale
            return (1.0 + 0.1 * x).astype(np.float32)
        return (0.1 * x).astype(np.float32)
    if ".ups." in name and len(shape) == 3:
        fan_in = shape[0] * shape[2] / 2.0
    else:
        fan_in = float(np.prod(shape[1:]))
    return x / np.float32(np.sqrt(fan_in))  # float32 division in every numpy version


def synthetic_state_dict(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """{name: synthetic_tensor(name, shape, seed)} for every entry of `shapes` (a name → shape mapping)."""
    return {name: synthetic_tensor(name, shape, seed) for name, shape in shapes.items()}


def fingerprint(tensors: Mapping[str, np.ndarray]) -> float:
    """A float64 checksum of a state dict (sum over keys of sum(x·(1+i/n))), to detect a changed RNG stream."""
    total = 0.0
    for name in sorted(tensors):
        x = np.asarray(tensors[name], dtype=np.float64).ravel()
        if x.size:
            total += float(np.dot(x, 1.0 + np.arange(x.size) / x.size))
    return total


def parity_clip(sample_rate: int = 48000, seconds: float = 3.0, cutoff_hz: float = 4000.0,
                seed: int = 0) -> np.ndarray:
    """A deterministic band-limited test signal, float32 mono [round(seconds·sample_rate)], peak ~0.6.

    Harmonic tones with vibrato and a noise band below `cutoff_hz`, so the reference's cutoff detector
    finds a cutoff near it and every stage sees non-trivial input.
    """
    rng = np.random.default_rng([int(seed), 12345])
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    x = np.zeros(n)
    for k, f0 in enumerate((220.0, 330.0, 523.25)):
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * (3 + k) * t))) / sample_rate
        for h in range(1, 12):
            if h * f0 < cutoff_hz * 0.9:
                x += np.sin(h * phase + k) / (h * (k + 1))
    noise = rng.standard_normal(n)
    spec = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    spec[freqs > cutoff_hz] = 0
    x += 0.3 * np.fft.irfft(spec, n)
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    x = x * env
    return (0.6 * x / np.max(np.abs(x))).astype(np.float32)
