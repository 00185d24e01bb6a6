"""Named network widths (the configs and the synthetic checkpoints take them from here, and only here).

  full     the released AudioSR (VAE ch 128, UNet 128, HiFi-GAN 1536): 672,012,546 parameters
  reduced  the parity-test width (VAE 32, UNet 32, vocoder 64; docs/parity.md)
  tiny     the smallest pipeline that keeps every structural feature, for fast tests and demos
"""

from __future__ import annotations

from audiosr_jax.models.unet import UNetConfig
from audiosr_jax.models.vae import VAEConfig
from audiosr_jax.models.vocoder import VocoderConfig

__all__ = ["WIDTHS", "architectures"]


def _tiny_vae() -> VAEConfig:
    # Four levels like the release (latent 8x smaller in time and frequency, so attention stays small),
    # but 32 channels throughout and one block per level.
    return VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=4, embed_dim=4)


# name → (VAEConfig, UNetConfig, VocoderConfig) factories
WIDTHS = {
    "tiny": (_tiny_vae, UNetConfig.tiny, VocoderConfig.tiny),
    "reduced": (VAEConfig.reduced, UNetConfig.reduced, VocoderConfig.reduced),
    "full": (VAEConfig, UNetConfig, VocoderConfig),
}


def architectures(preset: str) -> tuple[VAEConfig, UNetConfig, VocoderConfig]:
    """The three network configs of a preset ("tiny", "reduced", "full")."""
    if preset not in WIDTHS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(WIDTHS)}")
    return tuple(f() for f in WIDTHS[preset])
