"""The training state (a pytree) and the pieces every stage's step shares: gradient accumulation,
the NaN/inf guard, the EMA.

``TrainState`` holds one entry per trained parameter group (``{"unet": ...}`` for the LDM,
``{"generator": ..., "discriminator": ...}`` for a GAN stage) and never anything non-finite: a step whose
loss or gradient norm is not finite is dropped as a whole (``select_finite``) and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params/opt_state: dict group -> tree; ema: dict group -> tree (may be empty);
    rng: uint32 [2] (the run's root key; the step's key is ``fold_in(rng, step)``, so a resumed run draws
    the same numbers); skipped: int32 [] steps dropped as non-finite; consecutive_skipped: int32 []."""

    step: jax.Array
    params: dict
    opt_state: dict
    ema: dict
    rng: jax.Array
    skipped: jax.Array
    consecutive_skipped: jax.Array


def create_state(params: dict, txs: dict[str, optax.GradientTransformation], ema_groups=(), seed: int = 0) -> TrainState:
    """Fresh state: optimizer states from ``txs`` (group -> transformation), EMA copies of ``ema_groups``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={g: txs[g].init(params[g]) for g in txs},
        ema={g: jax.tree.map(jnp.copy, params[g]) for g in ema_groups},
        rng=jax.random.PRNGKey(seed),
        skipped=jnp.zeros((), jnp.int32),
        consecutive_skipped=jnp.zeros((), jnp.int32),
    )


def step_key(state: TrainState) -> jax.Array:
    """This step's PRNG key: a pure function of (seed, step)."""
    return jax.random.fold_in(state.rng, state.step)


def split_microbatches(batch: Any, n: int) -> Any:
    """[B, ...] leaves -> [n, B/n, ...] (B must divide by n)."""
    return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)


def accumulate_grads(loss_fn: Callable, params: Any, batch: Any, key: jax.Array, n: int):
    """Mean loss, metrics and gradients of ``loss_fn(params, batch, key) -> (loss, metrics)`` over ``n``
    micro-batches (a ``lax.scan``, so activation memory is that of one micro-batch). n == 1 is one call."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if n == 1:
        (loss, metrics), grads = grad_fn(params, batch, key)
        return loss, metrics, grads
    micro = split_microbatches(batch, n)
    keys = jax.random.split(key, n)

    def body(carry, xs):
        mb, k = xs
        (loss, metrics), grads = grad_fn(params, mb, k)
        carry = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
        return carry, None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), keys[0])))
    (loss, metrics), grads = zeros
    (loss, metrics, grads), _ = jax.lax.scan(body, (loss, metrics, grads), (micro, keys))
    return jax.tree.map(lambda x: x / n, (loss, metrics, grads))


def apply_group(state: TrainState, group: str, grads: Any, tx: optax.GradientTransformation) -> TrainState:
    """One optimizer update of ``group``."""
    updates, opt = tx.update(grads, state.opt_state[group], state.params[group])
    params = optax.apply_updates(state.params[group], updates)
    return state.replace(params={**state.params, group: params}, opt_state={**state.opt_state, group: opt})


def update_ema(state: TrainState, decay: float) -> TrainState:
    """EMA with LitEma's warm-up: decay_n = min(decay, (1 + n) / (10 + n)), n = updates so far."""
    if not state.ema:
        return state
    n = (state.step - state.skipped + 1).astype(jnp.float32)  # this update included, as LitEma counts
    d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    ema = {g: jax.tree.map(lambda e, p: e + (1.0 - d) * (p - e), state.ema[g], state.params[g]) for g in state.ema}
    return state.replace(ema=ema)


@jax.jit
def all_finite(*trees) -> jax.Array:
    """True iff every leaf of every tree is finite (bool []); one XLA program, whatever the tree."""
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def finish_step(old: TrainState, new: TrainState, finite: jax.Array) -> TrainState:
    """Keep ``new`` if the step was finite, else ``old``; advance the step and the skip counters either way."""
    kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), (new.params, new.opt_state, new.ema),
                        (old.params, old.opt_state, old.ema))
    skip = (~finite).astype(jnp.int32)
    return old.replace(params=kept[0], opt_state=kept[1], ema=kept[2], step=old.step + 1,
                       skipped=old.skipped + skip, consecutive_skipped=(old.consecutive_skipped + 1) * skip)
