"""Network architectures as ml_collections configs: `--config=audiosr_jax/configs/models.py:full` (or reduced, tiny).

  full     the released AudioSR (VAE ch 128, UNet 128, HiFi-GAN 1536): 672,012,546 parameters
  reduced  the parity-test width (VAE 32, UNet 32, vocoder 64; docs/parity.md)
  tiny     the smallest pipeline that keeps every structural feature, for fast tests and demos

Each field holds the `to_dict()` of the family's dataclass (audiosr_jax.models.*), so a config is plain
data that can be overridden from the command line (`--config.unet.model_channels=64`) and stored in a
checkpoint. `architectures(cfg)` turns it back into the dataclasses.
"""

import ml_collections

from audiosr_jax.models.presets import WIDTHS


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
    if preset not in WIDTHS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(WIDTHS)}")
    vae, unet, vocoder = (f() for f in WIDTHS[preset])
    return ml_collections.ConfigDict({"preset": preset, "vae": vae.to_dict(), "unet": unet.to_dict(),
                                      "vocoder": vocoder.to_dict()})


def architectures(cfg: ml_collections.ConfigDict):
    """(VAEConfig, UNetConfig, VocoderConfig) from a config made by get_config (possibly overridden)."""
    from audiosr_jax.training.weights import architectures as _architectures

    return _architectures(cfg)
