"""Which stage a config trains, and the frozen networks and initial weights it needs.

A stage object has ``name``, ``groups`` (trained parameter groups), ``ema_groups``, ``init(key, batch_shape)``,
``train_step(state, frozen, batch, txs)``, ``eval_step(state, frozen, batch, key)`` and optionally
``preview(state, frozen, batch, key)`` (mel images / audio for TensorBoard).

Weights come from either a converted AudioSR directory (``python -m audiosr_jax.convert``: has
``architecture.json``) or a training workdir of an earlier stage (its latest checkpoint, EMA if it has one).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from audiosr_jax.errors import CheckpointError


def _tree_to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _tree_to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def read_trained_params(workdir: str, group: str, prefer_ema: bool = True) -> tuple[dict, dict]:
    """(params of ``group``, saved config dict) from a training workdir's latest checkpoint."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"{workdir}: not a training workdir (no checkpoints/ folder)")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step()
    if step is None:
        raise CheckpointError(f"{workdir}: has no finished checkpoint")
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                          config=ocp.args.JsonRestore()))
    st, cfg = restored["state"], restored["config"]
    ema = st.get("ema") or {}
    source = ema if prefer_ema and group in ema else st["params"]
    if group not in source:
        raise CheckpointError(f"{workdir}: checkpoint has no '{group}' parameters (stage {cfg.get('stage')})")
    return _tree_to_numpy(source[group]), cfg


def load_group(path: str, family: str, group: str | None = None) -> tuple[dict, dict]:
    """Params of one network family ("vae", "unet", "vocoder") from a converted directory or a workdir.

    Returns (params, info) with info = {"scale_factor": float or None, "architecture": dict or None}.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if os.path.exists(os.path.join(path, "architecture.json")):
        from audiosr_jax.inference.checkpoint import load_weights

        w = load_weights(path)
        with open(os.path.join(path, "architecture.json")) as f:
            arch = json.load(f)
        return _tree_to_numpy(w.params[family]), {"scale_factor": float(w.scale_factor), "architecture": arch[family]}
    params, cfg = read_trained_params(path, group or family)
    return params, {"scale_factor": cfg.get("ldm", {}).get("scale_factor"), "architecture": cfg["model"][family]}


def check_architecture(path: str, family: str, saved: dict | None, current: dict) -> None:
    """Refuse weights whose architecture differs from the config's (one line, first differing field)."""
    if saved is None:
        return
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            raise CheckpointError(f"{path}: its {family} has {k}={a!r}, the config has {b!r}")


def architectures(model: Any):
    """(VAEConfig, UNetConfig, VocoderConfig) from ``config.model`` (the to_dict() of each family)."""
    from audiosr_jax.models.unet import UNetConfig
    from audiosr_jax.models.vae import VAEConfig
    from audiosr_jax.models.vocoder import VocoderConfig

    return (VAEConfig.from_dict(model.vae.to_dict()), UNetConfig.from_dict(model.unet.to_dict()),
            VocoderConfig.from_dict(model.vocoder.to_dict()))


def build_stage(config: Any) -> tuple[Any, dict]:
    """(stage object, frozen params as host numpy) for ``config.stage``."""
    vae_cfg, unet_cfg, voc_cfg = architectures(config.model)
    dtype = jnp.dtype(config.train.compute_dtype)
    if config.stage == "ldm":
        from audiosr_jax.training.ldm import LDMStage

        if not config.ldm.vae_from:
            raise CheckpointError("stage ldm needs a trained VAE: set --config.ldm.vae_from=DIR "
                                  "(a converted AudioSR directory or a VAE training workdir)")
        vae_params, info = load_group(config.ldm.vae_from, "vae")
        check_architecture(config.ldm.vae_from, "vae", info["architecture"], config.model.vae.to_dict())
        scale = float(config.ldm.scale_factor) if config.ldm.scale_factor > 0 else info["scale_factor"]
        frozen = {"vae": vae_params, "scale_factor": np.float32(scale if scale else 0.0)}
        return LDMStage(config, vae_cfg, unet_cfg, dtype), frozen
    if config.stage == "vae":
        from audiosr_jax.training.vae import VAEStage

        return VAEStage(config, vae_cfg, dtype), {}
    if config.stage == "vocoder":
        from audiosr_jax.training.vocoder import VocoderStage

        return VocoderStage(config, voc_cfg, dtype), {}
    raise ValueError(f"unknown stage {config.stage!r}; choose vae, vocoder or ldm")


INIT_FAMILY = {"ldm": {"unet": "unet"}, "vae": {"vae": "vae"}, "vocoder": {"generator": "vocoder"}}


def initial_params(config: Any) -> dict | None:
    """Fine-tuning: {group: params} from ``config.train.init_from`` (a converted AudioSR directory or a
    workdir), or None for a fresh start."""
    path = config.train.get("init_from", "")
    if not path:
        return None
    out = {}
    for group, family in INIT_FAMILY[config.stage].items():
        params, info = load_group(path, family, group)
        check_architecture(path, family, info["architecture"], config.model[family].to_dict())
        out[group] = params
    return out
