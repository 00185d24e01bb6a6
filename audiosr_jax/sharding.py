"""Meshes and sharding by name: logical axis names on params and activations, rules from the config.

Every array that crosses a ``jax.jit`` boundary in training gets its sharding from a *logical* name per
dimension, mapped to mesh axes by the config's rules (big_vision / MaxText style):

* activations: the leading dimension of every batch array is ``"batch"``;
* params: the models are written channels-last, so a parameter's role follows from its rank and the
  names below are attached by :func:`param_logical_axes` (one table, not per-module annotations, so the
  converted PyTorch checkpoints and the inference code keep plain arrays):

  =========  =================================  ==========================
  rank       what it is                         logical axes
  =========  =================================  ==========================
  0 / 1      bias, norm scale, scalar           ``("channels",)``
  2          Dense kernel ``[in, out]``         ``("embed", "mlp")``
  k + 2      Conv kernel ``[*spatial, in, out]``  ``(None,)*k + ("conv_in", "conv_out")``
  =========  =================================  ==========================

The default rules (``audiosr_jax/configs/common.py``) put ``batch`` on ``("data", "fsdp")``, ``embed``/``conv_in``
on ``fsdp`` (ZeRO-3-style parameter sharding: XLA all-gathers a layer's weights where it is used and
reduce-scatters its gradient) and ``mlp``/``conv_out`` on ``tensor``. A dimension that the mesh axis does
not divide stays replicated (small layers, odd channel counts), so the same config runs on 1 CPU, 8 fake
CPUs and a pod. Optimizer moments and the EMA take their parameter's sharding.

Grouped convolutions (``feature_group_count`` > 1, e.g. HiFi-GAN's MSD) are the exception to "activations
follow the batch rule": XLA's SPMD partitioner (jax 0.10.2, GSPMD and Shardy alike) sums a grouped conv's
kernel gradient over the replicas too when the batch is sharded on some mesh axes and replicated on others
(batch on ``data``/``fsdp`` with ``tensor`` > 1: the gradient comes out ``tensor`` times too large, however
the kernel itself is sharded). The training step therefore runs under :func:`grouped_convs_batch_sharded`,
which pins every grouped conv's input and output to a batch sharded over *all* mesh axes (replicated if
the batch does not divide), never over a subset.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from audiosr_jax.errors import UserError

Rules = Sequence[tuple[str, Any]]
log = logging.getLogger(__name__)


class ShardingError(UserError):
    """A mesh or batch that does not fit the devices (one-line message naming the numbers)."""


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all) with named axes, e.g. ``(("data", -1), ("fsdp", 2))``.

    One size may be -1 (takes what is left). The product must equal the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(a for a, _ in axes)
    sizes = [int(s) for _, s in axes]
    if len(set(names)) != len(names):
        raise ShardingError(f"mesh axes {names} repeat a name")
    if sizes.count(-1) > 1:
        raise ShardingError(f"mesh {dict(axes)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise ShardingError(f"mesh {dict(zip(names, sizes))} does not divide the {len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ShardingError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                            f"there are {len(devices)}")
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), names)


def param_logical_axes(shape: Sequence[int]) -> tuple[str | None, ...]:
    """Logical axis names of a channels-last parameter of this shape (see the module table)."""
    if len(shape) <= 1:
        return ("channels",) * len(shape)
    if len(shape) == 2:
        return ("embed", "mlp")
    return (None,) * (len(shape) - 2) + ("conv_in", "conv_out")


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], rules: Rules, mesh: Mesh) -> P:
    """PartitionSpec for one array: the rules' mapping, then replicated wherever the mesh does not divide."""
    spec = nn.logical_to_mesh_axes(tuple(logical), tuple((k, v) for k, v in rules))
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        names = tuple(a for a in names if a in mesh.shape)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(None if not names or size == 1 or dim % size else (names if len(names) > 1 else names[0]))
    return P(*out)


def param_specs(params: Any, rules: Rules, mesh: Mesh) -> Any:
    """PartitionSpec tree for a param tree (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(lambda p: logical_to_spec(param_logical_axes(p.shape), p.shape, rules, mesh), params)


def opt_state_specs(tx: optax.GradientTransformation, opt_state: Any, specs: Any) -> Any:
    """Optimizer state specs: per-parameter leaves (moments) take their parameter's spec, the rest replicated."""
    return optax.tree_map_params(tx, lambda _, s: s, opt_state, specs,
                                 transform_non_params=lambda _: P(),
                                 is_leaf=lambda x: isinstance(x, P))


def batch_spec(rules: Rules, mesh: Mesh, ndim: int = 1) -> P:
    """Spec of a batch array: leading dimension ``"batch"``, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), tuple(rules))
    return P(*spec)


def batch_axes_size(rules: Rules, mesh: Mesh) -> int:
    """How many shards the batch dimension is split into on this mesh."""
    axes = batch_spec(rules, mesh)[0]
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in names if a in mesh.shape)


def check_batch(global_batch: int, rules: Rules, mesh: Mesh, what: str = "batch size") -> None:
    """Refuse a global batch that the batch axes do not divide (one line, both numbers named)."""
    n = batch_axes_size(rules, mesh)
    if global_batch % n:
        raise ShardingError(f"{what} {global_batch} does not divide over the {n} data-parallel shards "
                            f"of mesh {dict(mesh.shape)}")
    if global_batch % jax.process_count():
        raise ShardingError(f"{what} {global_batch} does not divide over {jax.process_count()} hosts")


def named(mesh: Mesh, specs: Any) -> Any:
    """NamedSharding tree from a PartitionSpec tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Rules from a ConfigDict/tuple/list (lists of mesh axes become tuples, as flax expects)."""
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for k, v in items:
        out.append((str(k), tuple(v) if isinstance(v, (list, tuple)) else v))
    return tuple(out)


def _groups(module: Any) -> int:
    """A flax module's convolution group count (``groups`` or ``feature_group_count``; 1 if neither)."""
    return max(int(getattr(module, "groups", 1) or 1), int(getattr(module, "feature_group_count", 1) or 1))


@contextlib.contextmanager
def grouped_convs_batch_sharded(mesh: Mesh):
    """Context manager for tracing a step on ``mesh``: every grouped convolution module called inside it has
    its input and output constrained to a leading (batch) dim sharded over all the mesh's axes, or
    replicated if that dim does not divide by the mesh size (see the module doc: a batch sharded over only
    some axes gets wrong kernel gradients). Other modules are untouched."""
    everywhere = tuple(mesh.axis_names)
    warned: set = set()

    def pin(x):
        if not hasattr(x, "ndim") or x.ndim == 0:
            return x
        if x.shape[0] % mesh.size:
            if x.shape[0] not in warned:
                warned.add(x.shape[0])
                log.warning("grouped convolutions on a batch of %d, which does not divide over the %d devices, "
                            "run replicated (correct, slower)", x.shape[0], mesh.size)
            spec = P()
        else:
            spec = P(everywhere)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or _groups(context.module) <= 1 or not args:
            return next_fun(*args, **kwargs)
        return jax.tree.map(pin, next_fun(pin(args[0]), *args[1:], **kwargs))

    with nn.intercept_methods(interceptor):
        yield
