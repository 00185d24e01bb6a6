"""Synthetic AudioSR checkpoints in the released PyTorch key layout, for tests, demos and benchmarks.

The weights are random (`audiosr_jax.lab.synthetic`), so the audio they produce is not meaningful; what they
exercise is everything else: conversion, shapes, the pipeline, the command line, error handling.
"""

from __future__ import annotations

import os

import numpy as np

from audiosr_jax.inference.checkpoint import abstract_params
from audiosr_jax.convert import unet as unet_conv
from audiosr_jax.convert import vae as vae_conv
from audiosr_jax.convert import vocoder as vocoder_conv
from audiosr_jax.convert.core import COND_VAE, UNET, VAE
from audiosr_jax.convert.rules import to_torch
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod
from audiosr_jax.models.presets import WIDTHS
from audiosr_jax.models.unet import UNetConfig
from audiosr_jax.models.vae import VAEConfig
from audiosr_jax.models.vocoder import VocoderConfig
from audiosr_jax.lab.synthetic import synthetic_state_dict

__all__ = ["WIDTHS", "torch_shapes", "synthetic_torch_checkpoint", "write_synthetic_checkpoint"]



def _zeros_like_tree(tree):
    if isinstance(tree, dict):
        return {k: _zeros_like_tree(v) for k, v in tree.items()}
    return np.broadcast_to(np.zeros((), np.float32), tree.shape)  # a zero-stride view: no memory


def torch_shapes(vae: VAEConfig, unet: UNetConfig, vocoder: VocoderConfig) -> dict[str, tuple[int, ...]]:
    """{torch key: shape} of the inference subset (UNet, first-stage VAE with vocoder) for these configs."""
    target = _zeros_like_tree(abstract_params(vae, unet, vocoder))
    sd = to_torch(vae_conv.rules(vae), target["vae"], VAE)
    sd.update(to_torch(unet_conv.rules(unet), target["unet"], UNET))
    sd.update(to_torch(vocoder_conv.rules(vocoder), target["vocoder"], VAE + "vocoder."))
    return {k: tuple(v.shape) for k, v in sd.items()}


def synthetic_torch_checkpoint(width: str = "tiny", seed: int = 0, scale_factor: float = 0.55,
                               with_cond_vae: bool = True) -> dict[str, np.ndarray]:
    """A released-layout state dict with synthetic weights: the inference subset, `scale_factor`, the
    schedule buffer `alphas_cumprod`, and (as in the release) a conditioning-VAE copy of the encoder."""
    vae, unet, voc = (f() for f in WIDTHS[width])
    sd = synthetic_state_dict(torch_shapes(vae, unet, voc), seed=seed)
    if with_cond_vae:
        for k in [k for k in sd if k.startswith(VAE + "encoder.") or k.startswith(VAE + "quant_conv.")]:
            sd[COND_VAE + k[len(VAE):]] = sd[k]
    sd["scale_factor"] = np.asarray(scale_factor, np.float32)
    sd["alphas_cumprod"] = cosine_alphas_cumprod().astype(np.float32)
    return sd


def write_synthetic_checkpoint(path: str | os.PathLike, width: str = "tiny", seed: int = 0, **kwargs) -> str:
    """Write `synthetic_torch_checkpoint(...)` to `path` (.safetensors, or .pth/.bin through torch.save)."""
    path = os.fspath(path)
    sd = synthetic_torch_checkpoint(width, seed, **kwargs)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, path)
    else:
        import torch

        torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}}, path)
    return path
