"""Released AudioSR checkpoint (PyTorch state dict) → `AudioSRWeights`.

Keeps the inference subset: the UNet (`model.diffusion_model.`), the first-stage VAE and its vocoder
(`first_stage_model.`), `scale_factor`, and the conditioning VAE's encoder (`cond_stage_models.0.vae.`) only
when it differs from the first-stage one. The architecture of each network is inferred from tensor shapes,
so reduced-width checkpoints convert the same way. Known-unused groups (EMA, CLAP, the conditioning VAE's
decoder and vocoder) are skipped; any other key is reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from audiosr_jax.inference.checkpoint import AudioSRWeights, abstract_params
from audiosr_jax.convert import unet as unet_conv
from audiosr_jax.convert import vae as vae_conv
from audiosr_jax.convert import vocoder as vocoder_conv
from audiosr_jax.convert.rules import ConversionError, TensorSource, expected_keys, to_flax
from audiosr_jax.convert.torch_files import open_state_dict
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod

__all__ = ["convert_state_dict", "convert_file", "ConversionReport", "UNET", "VAE", "COND_VAE"]

log = logging.getLogger(__name__)

UNET = "model.diffusion_model."
VAE = "first_stage_model."
VOCODER = "vocoder."  # inside VAE
COND_VAE = "cond_stage_models.0.vae."
# Present in the release, unused by inference (docs/design.md §Checkpoint format).
IGNORED_PREFIXES = ("model_ema.", "clap.", "cond_stage_models.0.vae.decoder.", "cond_stage_models.0.vae.vocoder.",
                    "cond_stage_models.0.vae.post_quant_conv.")
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights")


@dataclass
class ConversionReport:
    used: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    cond_vae: str = "same as first stage"

    def summary(self) -> str:
        ign = ", ".join(f"{p} ({n})" for p, n in sorted(self.ignored.items())) or "none"
        return f"used {self.used} tensors; skipped {ign}; conditioning VAE: {self.cond_vae}"


def _same_tensors(tensors: Mapping, a_prefix: str, b_prefix: str, keys: list[str]) -> bool:
    for k in keys:
        a, b = tensors.get(a_prefix + k), tensors.get(b_prefix + k)
        if a is None or b is None or tuple(a.shape) != tuple(b.shape):
            return False
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            return False
    return True


def convert_state_dict(tensors: Mapping, origin: str = "checkpoint") -> tuple[AudioSRWeights, ConversionReport]:
    """Convert a flat {key: array-like with .shape} state dict. Raises ConversionError naming what is wrong."""
    report = ConversionReport()
    if not any(k.startswith(UNET) for k in tensors):
        sample = ", ".join(list(tensors)[:3]) or "no keys at all"
        raise ConversionError(f"{origin}: not an AudioSR checkpoint: no '{UNET}*' keys (found {len(tensors)} keys: {sample})")
    if not any(k.startswith(VAE + "encoder.") for k in tensors):
        raise ConversionError(f"{origin}: not an AudioSR checkpoint: no '{VAE}encoder.*' keys")
    if not any(k.startswith(VAE + VOCODER) for k in tensors):
        raise ConversionError(f"{origin}: no vocoder weights ('{VAE}{VOCODER}*')")
    if "scale_factor" not in tensors:
        raise ConversionError(f"{origin}: missing key 'scale_factor' (the latent scale)")

    root = TensorSource(tensors, origin=origin)
    vae_src, unet_src, voc_src = root.sub(VAE), root.sub(UNET), root.sub(VAE + VOCODER)
    vae_cfg, unet_cfg, voc_cfg = (vae_conv.infer_config(vae_src), unet_conv.infer_config(unet_src),
                                  vocoder_conv.infer_config(voc_src))
    target = abstract_params(vae_cfg, unet_cfg, voc_cfg)
    vae_rules, unet_rules, voc_rules = vae_conv.rules(vae_cfg), unet_conv.rules(unet_cfg), vocoder_conv.rules(voc_cfg)
    params = {
        "vae": to_flax(vae_rules, vae_src, target["vae"]),
        "unet": to_flax(unet_rules, unet_src, target["unet"]),
        "vocoder": to_flax(voc_rules, voc_src, target["vocoder"]),
    }
    used = {VAE + k for k in expected_keys(vae_rules)} | {UNET + k for k in expected_keys(unet_rules)}
    used |= {VAE + VOCODER + k for k in expected_keys(voc_rules)} | {"scale_factor"}

    enc_rules = [r for r in vae_rules if r.flax[0] in ("encoder", "quant_conv")]
    enc_keys = expected_keys(enc_rules)
    if any(k.startswith(COND_VAE) for k in tensors):
        cond_keys = {COND_VAE + k for k in enc_keys}
        if _same_tensors(tensors, VAE, COND_VAE, enc_keys):
            report.cond_vae = "identical to the first-stage encoder (not stored twice)"
        else:
            cond_src = root.sub(COND_VAE)
            cond_cfg = vae_conv.infer_config(cond_src)
            if cond_cfg != vae_cfg:
                raise ConversionError(f"{origin}: the conditioning VAE's architecture {cond_cfg} differs from the "
                                      f"first-stage VAE's {vae_cfg}; not supported")
            target_enc = {k: v for k, v in target["vae"].items() if k in ("encoder", "quant_conv")}
            params["cond_vae"] = to_flax(enc_rules, cond_src, target_enc)
            report.cond_vae = "differs from the first stage: stored as cond_vae"
        used |= cond_keys
    else:
        report.cond_vae = "absent: the first-stage encoder conditions the model"

    unexpected = []
    for k in tensors:
        if k in used:
            continue
        ignored = next((p + "*" for p in IGNORED_PREFIXES if k.startswith(p)), None)
        if ignored is None and k in SCHEDULE_BUFFERS:
            ignored = "schedule buffers"
        if ignored is None and k.startswith(COND_VAE):
            ignored = COND_VAE + "*"
        if ignored is not None:
            report.ignored[ignored] = report.ignored.get(ignored, 0) + 1
        else:
            unexpected.append(k)
    if unexpected:
        more = f" (and {len(unexpected) - 10} more)" if len(unexpected) > 10 else ""
        raise ConversionError(f"{origin}: {len(unexpected)} unexpected key(s): {', '.join(unexpected[:10])}{more}")
    report.used = len(used)

    if "alphas_cumprod" in tensors:
        from audiosr_jax.convert.torch_files import HALF_PRECISION, stored_dtype

        ac = np.asarray(tensors["alphas_cumprod"], np.float64)
        ours = cosine_alphas_cumprod(len(ac))
        # the tolerance follows the stored precision: an fp16/bf16 buffer holds the schedule rounded to its dtype
        # (2 ulps there: rounding through float32 first may cost one); float32 and wider keep 1e-5
        tol = 1e-5
        half = HALF_PRECISION.get(stored_dtype(tensors["alphas_cumprod"]))
        if half is not None and ac.shape == ours.shape:
            tol = np.maximum(tol, 2.0 * np.spacing(ours.astype(half)).astype(np.float64))
        if ac.shape != ours.shape or np.any(np.abs(ac - ours) > tol):
            raise ConversionError(f"{origin}: 'alphas_cumprod' is not the unclipped 1000-step cosine schedule "
                                  "AudioSR uses; this sampler would not match the model")

    scale = np.asarray(tensors["scale_factor"], np.float64)
    if scale.size != 1 or not np.isfinite(scale).all() or float(scale.reshape(())) <= 0:
        raise ConversionError(f"{origin}: 'scale_factor' must be one positive finite number, got {scale.ravel()[:4]}")
    weights = AudioSRWeights(vae_cfg, unet_cfg, voc_cfg, params, float(scale.reshape(())), source=os.path.basename(origin))
    return weights, report


def convert_file(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                 overwrite: bool = False) -> tuple[AudioSRWeights, ConversionReport]:
    """Convert a .bin/.pth/.ckpt/.safetensors file; if `dst` is given, save the checkpoint directory there."""
    from audiosr_jax.inference.checkpoint import check_output_dir, save_weights

    src = os.fspath(src)
    if dst is not None:  # before the (slow) conversion; only a checkpoint of ours (never the input) is replaced
        check_output_dir(dst, overwrite)
    tensors = open_state_dict(src)
    weights, report = convert_state_dict(tensors, origin=src)
    if dst is not None:
        save_weights(weights, dst, overwrite=overwrite)
    return weights, report
