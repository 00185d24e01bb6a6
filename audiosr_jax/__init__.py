"""audiosr-jax: AudioSR (Liu et al. 2023) in JAX/Flax.

This top-level module imports nothing heavy on purpose: `audiosr_jax.synthetic` must also import inside
the PyTorch reference environment (numpy only) to generate parity weights.
"""

__version__ = "0.1.0"
