"""PyTorch AudioSR checkpoints → audiosr-jax checkpoint directories.

    python -m audiosr_jax.convert pytorch_model.bin ckpt/basic
    weights, report = audiosr_jax.convert.convert_file("pytorch_model.bin", "ckpt/basic")

Submodules `vae`, `unet`, `vocoder` hold each family's layer table (`rules`) and shape-based architecture
inference (`infer_config`); `rules` holds the generic torch ↔ Flax layout machinery.
"""


def convert_file(*args, **kwargs):
    """See `audiosr_jax.convert.core.convert_file` (imported lazily to keep `import audiosr_jax.convert` light)."""
    from audiosr_jax.convert.core import convert_file as impl

    return impl(*args, **kwargs)


def convert_state_dict(*args, **kwargs):
    """See `audiosr_jax.convert.core.convert_state_dict`."""
    from audiosr_jax.convert.core import convert_state_dict as impl

    return impl(*args, **kwargs)
