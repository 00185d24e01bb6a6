"""audiosr-jax: AudioSR (Liu et al. 2023) in JAX/Flax.

    from audiosr_jax import AudioSR
    sr = AudioSR.from_pretrained("basic")
    y = sr(x, 16000)  # → 48 kHz

This module imports nothing heavy on purpose (`AudioSR` is loaded on first use): `audiosr_jax.lab.synthetic`
must also import inside the PyTorch reference environment (numpy only) to generate parity weights.
"""

__version__ = "0.1.0"
__all__ = ["AudioSR"]


def __getattr__(name):
    if name == "AudioSR":
        from audiosr_jax.inference.api import AudioSR

        return AudioSR
    raise AttributeError(f"module 'audiosr_jax' has no attribute {name!r}")
