"""Reading the weights a stage starts from or freezes: a converted AudioSR directory (``python -m
audiosr_jax.convert``: has ``architecture.json``) or a training workdir of an earlier stage (its latest
checkpoint, EMA if it has one). Host numpy out; no device placement.
"""

from __future__ import annotations

import json
import os
from typing import Any

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
