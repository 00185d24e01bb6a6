"""Build the official AudioSR 0.0.7 `LatentDiffusion` with deterministic synthetic weights (run inside .refenv).

    import reference_model as rm
    model, shapes, weights = rm.build_reference_model("reduced")   # or "full"

* The model is built directly from `audiosr.utils.get_basic_config()` (never `build_model`, which downloads).
* width "reduced" (docs/design.md §Reduced width): VAE ch 128 -> 32 (both VAEs), UNet model_channels 128 -> 32, vocoder
  upsample_initial_channel 1536 -> 64; "full" is the released architecture.
* CLAP (built in `DDPM.__init__`, unused for super-resolution) is replaced by an empty module.
* Every nn.Parameter under `first_stage_model.` and `model.diffusion_model.` is set from
  `audiosr_jax.lab.synthetic.synthetic_state_dict(shapes, seed)` (seed 0), keyed by its full state_dict name.
* The conditioning VAE `cond_stage_models.0.vae` gets weights of its *own*, unlike the release (where it is
  a copy of `first_stage_model`), so that the fixtures tell the two encoders apart: the parameters its
  forward uses (`VAEFeatureExtract.forward` = `vae.encode(x).sample()` = `encoder` then `quant_conv`,
  COND_PREFIXES) are `synthetic_state_dict(cond_shapes, COND_SEED)` (seed 1) under their own full names; its
  decoder, post_quant_conv and vocoder, which never run, stay a copy of the first stage's.
* `scale_factor` is filled with 0.55 in place (the DiffusionWrapper holds the same tensor); the schedule
  buffers stay as the model computes them. The model is in eval mode.
"""

from __future__ import annotations

import copy
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for _p in (HERE, REPO):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import patches  # noqa: E402,F401  (must precede audiosr)
import torch  # noqa: E402

import audiosr  # noqa: E402,F401
import audiosr.latent_diffusion.models.ddpm as ddpm  # noqa: E402
import audiosr.utilities.model as utilities_model  # noqa: E402
from audiosr.utils import get_basic_config  # noqa: E402
from audiosr_jax.lab.synthetic import synthetic_state_dict  # noqa: E402

__all__ = ["WIDTHS", "SYNTHETIC_PREFIXES", "COND_PREFIX", "COND_PREFIXES", "COND_SEED", "SCALE_FACTOR", "model_config",
           "build_reference_model"]

# (VAE ch, UNet model_channels, vocoder upsample_initial_channel)
WIDTHS = {"reduced": (32, 32, 64), "full": (128, 128, 1536)}
SYNTHETIC_PREFIXES = ("first_stage_model.", "model.diffusion_model.")
COND_PREFIX = "cond_stage_models.0.vae."
COND_PREFIXES = (COND_PREFIX + "encoder.", COND_PREFIX + "quant_conv.")  # all the conditioning VAE runs
COND_SEED = 1
SCALE_FACTOR = 0.55

_ORIGINAL_VOCODER_CONFIG = utilities_model.get_vocoder_config_48k


def model_config(width: str = "reduced") -> dict:
    """`get_basic_config()["model"]["params"]` with the widths of `width` applied (a fresh deep copy)."""
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {sorted(WIDTHS)}, got {width!r}")
    vae_ch, unet_ch, _ = WIDTHS[width]
    params = copy.deepcopy(get_basic_config()["model"]["params"])
    params["first_stage_config"]["params"]["ddconfig"]["ch"] = vae_ch
    cond = params["cond_stage_config"]["concat_lowpass_cond"]["params"]["first_stage_config"]
    cond["params"]["ddconfig"]["ch"] = vae_ch
    params["unet_config"]["params"]["model_channels"] = unet_ch
    return params


def _set_vocoder_width(channels: int) -> None:
    """`get_vocoder` looks `get_vocoder_config_48k` up in its module at call time, so patch it there."""

    def config():
        cfg = _ORIGINAL_VOCODER_CONFIG()
        cfg["upsample_initial_channel"] = channels
        return cfg

    utilities_model.get_vocoder_config_48k = config


def build_reference_model(width: str = "reduced", seed: int = 0, scale_factor: float = SCALE_FACTOR):
    """The reference LatentDiffusion with synthetic weights.

    Returns (model, shapes, weights): `shapes` = {state_dict key: shape} of exactly the synthetic keys (every
    parameter under SYNTHETIC_PREFIXES, then every one under COND_PREFIXES, each group in state_dict order)
    and `weights` = the float32 numpy arrays set (the first group drawn with `seed`, the second with
    COND_SEED).
    """
    params = model_config(width)
    _set_vocoder_width(WIDTHS[width][2])
    ddpm.CLAPAudioEmbeddingClassifierFreev2 = patches.empty_clap  # unused for SR; saves ~200 M params
    try:
        model = ddpm.LatentDiffusion(**params, device="cpu")
    finally:
        utilities_model.get_vocoder_config_48k = _ORIGINAL_VOCODER_CONFIG
    model.eval()

    named = dict(model.named_parameters())
    shapes = {k: tuple(p.shape) for k, p in named.items() if k.startswith(SYNTHETIC_PREFIXES)}
    cond_shapes = {k: tuple(p.shape) for k, p in named.items() if k.startswith(COND_PREFIXES)}
    weights = synthetic_state_dict(shapes, seed=seed)
    cond_weights = synthetic_state_dict(cond_shapes, seed=COND_SEED)
    with torch.no_grad():
        cond_vae = model.cond_stage_models[0].vae
        for key, value in weights.items():
            named[key].copy_(torch.from_numpy(value))
        # decoder / post_quant_conv / vocoder of the conditioning VAE: never run; a copy keeps them deterministic
        missing, unexpected = cond_vae.load_state_dict(model.first_stage_model.state_dict(), strict=True)
        assert not missing and not unexpected
        for key, value in cond_weights.items():
            named[key].copy_(torch.from_numpy(value))
        model.scale_factor.fill_(scale_factor)
        first_enc = model.first_stage_model.encoder.conv_in.weight
        assert not torch.equal(cond_vae.encoder.conv_in.weight, first_enc), "the two encoders must differ"
    assert model.model.scale_factor is model.scale_factor, "DiffusionWrapper must share the scale_factor buffer"
    return model, {**shapes, **cond_shapes}, {**weights, **cond_weights}
