"""Training stages: the small Protocol every stage implements, and the registry that picks one by name.

A stage is one module with one class implementing `Stage`; adding one is that module plus one line in
`REGISTRY`. The loop (training/loop.py), fine-tuning (`initial_params`) and export (training/export.py)
only talk to a stage through this Protocol, never by its name.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Protocol

import jax

from audiosr_jax.errors import UserError
from audiosr_jax.training import state as st
from audiosr_jax.training.weights import check_architecture, load_group

# stage name -> "module:class"; imported only when that stage is built
REGISTRY = {
    "vae": "audiosr_jax.training.vae:VAEStage",
    "vocoder": "audiosr_jax.training.vocoder:VocoderStage",
    "ldm": "audiosr_jax.training.ldm:LDMStage",
    "distill": "audiosr_jax.training.distill:DistillStage",
}


class Stage(Protocol):
    """What the training loop needs from a stage. Every method is pure (jit-able) except ``from_config``,
    ``prepare`` and ``preview``'s host use.

    ``groups``: the trained parameter groups (one optimizer each, ``config.optim[group]`` or ``config.optim``);
    ``ema_groups``: those that keep an EMA copy; ``families``: {network family ("vae", "unet", "vocoder"):
    the group holding it}, what fine-tuning (``train.init_from``) reads in and export writes out.
    """

    name: ClassVar[str]
    groups: ClassVar[tuple[str, ...]]
    ema_groups: ClassVar[tuple[str, ...]]
    families: ClassVar[dict[str, str]]

    @classmethod
    def from_config(cls, config: Any) -> tuple["Stage", dict]:
        """(the stage for ``config``, its frozen networks as host numpy {name: params or scalar})."""
        ...

    def init(self, key: jax.Array, batch_shape: tuple[int, int]) -> dict:
        """Fresh params {group: tree} for crops of ``batch_shape`` = (B, N samples at 48 kHz)."""
        ...

    def train_step(self, state: st.TrainState, frozen: dict, batch: dict, txs: dict) -> tuple[st.TrainState, dict]:
        """One optimizer step on a global batch {"audio": [B, N], ...}: (new state, scalar metrics)."""
        ...

    def eval_step(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """Scalar validation metrics of one batch."""
        ...

    def prepare(self, frozen: dict, batch: dict, key: jax.Array, saved_config: dict | None) -> tuple[dict, dict]:
        """Before the first step, on the first batch: (frozen entries to replace, updates to merge into the
        saved config). ``saved_config`` is the resumed checkpoint's config, None for a fresh run."""
        return {}, {}

    def preview(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """{"mel/NAME": [F, M] image, "audio/NAME": [N] 48 kHz} for TensorBoard (may be empty)."""
        return {}

    @classmethod
    def exported_sampling(cls, saved_config: dict, step: int) -> dict:
        """How export should tell inference to sample the network a checkpoint of ``step`` holds
        (architecture.json "sampling": steps, sampler, guidance, eta); {} = the release's defaults."""
        return {}


def stage_class(name: str) -> type[Stage]:
    """The class registered as ``name``; UserError (one line) naming the choices for an unknown one."""
    if name not in REGISTRY:
        raise UserError(f"unknown stage {name!r}; choose one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_stage(config: Any) -> tuple[Stage, dict]:
    """(stage object, frozen params as host numpy) for ``config.stage``."""
    return stage_class(str(config.stage)).from_config(config)


def stages_training(family: str) -> dict[str, str]:
    """{stage name: parameter group} of every registered stage that trains network ``family``."""
    return {name: stage_class(name).families[family] for name in REGISTRY if family in stage_class(name).families}


def trained_by(family: str) -> tuple[str, str]:
    """(stage name, parameter group) of the stage that trains network ``family`` ("vae", "unet", "vocoder")."""
    for name in REGISTRY:
        groups = stage_class(name).families
        if family in groups:
            return name, groups[family]
    raise ValueError(f"no stage trains the {family!r} network")


def initial_params(config: Any) -> dict | None:
    """Fine-tuning: {group: params} from ``config.train.init_from`` (a converted AudioSR directory or a
    workdir), or None for a fresh start."""
    path = config.train.get("init_from", "")
    if not path:
        return None
    out = {}
    for family, group in stage_class(str(config.stage)).families.items():
        params, info = load_group(path, family, group)
        check_architecture(path, family, info["architecture"], config.model[family].to_dict())
        out[group] = params
    return out
