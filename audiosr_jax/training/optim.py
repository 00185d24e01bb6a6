"""Optimizers from the config: AdamW (or Adam) with warm-up + constant / cosine / exponential decay, clipping.

One ``optax`` chain per trained parameter group (a GAN stage has two). Gradient accumulation is done in
the step (a ``lax.scan`` over micro-batches, see ``training/step.py``), not with ``optax.MultiSteps``, so
every optimizer update sees the mean gradient of the whole global batch and the NaN guard sees it too.
"""

from __future__ import annotations

from typing import Any

import optax


def learning_rate_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Warm-up (linear from 0) then ``cfg.schedule``: "constant" (AudioSR's LDM), "cosine" (to
    ``lr · end_factor`` at ``total_steps``) or "exponential" (× ``decay_rate`` every ``decay_every`` steps,
    HiFi-GAN's per-epoch 0.999)."""
    lr, warmup = float(cfg.lr), int(cfg.get("warmup_steps", 0))
    kind = cfg.get("schedule", "constant")
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup), alpha=float(cfg.get("end_factor", 0.0)))
    elif kind == "exponential":
        after = optax.exponential_decay(lr, int(cfg.get("decay_every", 1000)), float(cfg.get("decay_rate", 0.999)),
                                        staircase=True)
    else:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; choose constant, cosine or exponential")
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule) for one parameter group from ``cfg`` (optimizer "adam"|"sgd", lr, b1, b2,
    eps, weight_decay, clip_norm or None, warmup_steps, schedule, ...)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.get("clip_norm"):
        parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
    wd = float(cfg.get("weight_decay", 0.0))
    b1, b2, eps = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999)), float(cfg.get("eps", 1e-8))
    name = cfg.get("optimizer", "adam")
    if name == "sgd":  # plain (momentum b1) SGD: used where updates must be linear in the gradient (tests)
        parts.append(optax.sgd(schedule, momentum=b1 or None))
    elif name != "adam":
        raise ValueError(f"unknown optimizer {name!r}; choose adam (AdamW when weight_decay > 0) or sgd")
    elif wd:
        parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd))
    else:
        parts.append(optax.adam(schedule, b1=b1, b2=b2, eps=eps))
    return optax.chain(*parts), schedule
