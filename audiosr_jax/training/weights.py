"""Reading the weights a stage starts from or freezes: a converted AudioSR directory (``python -m
audiosr_jax.convert``: has ``architecture.json``) or a training workdir of an earlier stage (its latest
checkpoint, EMA if it has one). Host numpy out; no device placement.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from audiosr_jax import paths
from audiosr_jax.errors import CheckpointError


def _tree_to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _tree_to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def read_trained_params(workdir: str, group: str, prefer_ema: bool = True) -> tuple[dict, dict]:
    """(params of ``group`` as host numpy, saved config dict) from a training workdir's latest checkpoint
    (a path or a URI). Only that group is read, as plain numpy whatever mesh the run was sharded on, so a
    run trained with FSDP across hosts reads back on any process count."""
    directory = paths.resolve(workdir) / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"{workdir}: not a training workdir (no checkpoints/ folder)")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = mngr.latest_step()
        if step is None:
            raise CheckpointError(f"{workdir}: has no finished checkpoint")
        cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    finally:
        mngr.close()
    state_dir = directory / str(step) / "state"
    handler = ocp.StandardCheckpointHandler()
    try:
        saved = handler.metadata(state_dir).tree
    finally:
        handler.close()
    where = "ema" if prefer_ema and group in (saved.get("ema") or {}) else "params"
    if group not in (saved.get(where) or {}):
        raise CheckpointError(f"{workdir}: checkpoint has no '{group}' parameters (stage {cfg.get('stage')})")
    item = {where: {group: saved[where][group]}}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.PyTreeCheckpointer() as reader:
        out = reader.restore(state_dir, args=ocp.args.PyTreeRestore(item, restore_args=restore_args,
                                                                   partial_restore=True))
    return _tree_to_numpy(out[where][group]), cfg


def load_group(path: str, family: str, group: str | None = None) -> tuple[dict, dict]:
    """Params of one network family ("vae", "unet", "vocoder") from a converted directory or a workdir
    (a path or a URI).

    Returns (params, info) with info = {"scale_factor": float or None, "architecture": dict or None}.
    """
    root = paths.resolve(path)
    if not root.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (root / "architecture.json").exists():
        from audiosr_jax.inference.checkpoint import load_weights

        w = load_weights(str(root))
        arch = json.loads((root / "architecture.json").read_text())
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
