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

Meshes come from the config (:func:`mesh_from_config`): ``config.mesh`` is laid out by jax's topology-aware
``mesh_utils.create_device_mesh`` and ``config.mesh_dcn`` multiplies it across slices or processes
(``create_hybrid_device_mesh``). :func:`check_batch`, :func:`check_batch_spans_processes` and
:func:`check_rules` are what the training loop checks before anything is compiled or read.
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


def _axis_sizes(axes: Sequence[tuple[str, int]], what: str) -> tuple[tuple[str, ...], list[int]]:
    """(names, sizes) of a config mesh ((name, size), ...); ShardingError (one line) for a repeated name,
    more than one -1, or a size that is 0 or below -1. ``what`` names the setting in the message."""
    names = tuple(str(a) for a, _ in axes)
    sizes = [int(s) for _, s in axes]
    if len(set(names)) != len(names):
        raise ShardingError(f"{what} {names} repeats an axis name")
    if sizes.count(-1) > 1:
        raise ShardingError(f"{what} {dict(zip(names, sizes))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ShardingError(f"{what} {dict(zip(names, sizes))}: sizes must be >= 1 (or one -1)")
    return names, sizes


def _resolve(names: tuple[str, ...], sizes: list[int], n: int, what: str, unit: str) -> list[int]:
    """``sizes`` with its -1 replaced by what is left of ``n`` (devices, or slices); ShardingError (one line,
    ``what`` and both numbers named) when the product is not ``n``."""
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes and n % known:
        raise ShardingError(f"{what} {dict(zip(names, sizes))} does not divide the {n} {unit}")
    out = [n // known if s == -1 else s for s in sizes]
    if math.prod(out) != n:
        raise ShardingError(f"{what} {dict(zip(names, out))} needs {math.prod(out)} {unit}, there are {n}")
    return out


def _granules(devices: Sequence[jax.Device]) -> tuple[str, list[list[jax.Device]]]:
    """("slice", devices per TPU slice) when the devices carry several ``slice_index`` values, else
    ("process", devices per process): the units a DCN (data-center network) mesh axis is laid over."""
    attr = "slice_index" if len({getattr(d, "slice_index", 0) for d in devices}) > 1 else "process_index"
    groups: dict[int, list] = {}
    for d in devices:
        groups.setdefault(int(getattr(d, attr)), []).append(d)
    return attr.split("_")[0], [groups[k] for k in sorted(groups)]


def _device_grid(shape: Sequence[int], devices: Sequence[jax.Device]) -> np.ndarray:
    """``devices`` as an array of ``shape`` in a topology-aware order (``mesh_utils.create_device_mesh``: the
    physical torus on TPU, id order on GPU, as listed on CPU); a plain reshape where the topology has no
    layout for that shape (correct, maybe slower collectives)."""
    from jax.experimental import mesh_utils

    try:
        return mesh_utils.create_device_mesh(tuple(shape), list(devices), allow_split_physical_axes=True)
    except (ValueError, NotImplementedError) as e:
        log.warning("no topology-aware layout of %d devices as %s (%s); using them in listed order",
                    len(devices), tuple(shape), e)
        return np.asarray(devices, dtype=object).reshape(shape)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None,
              dcn_axes: Sequence[tuple[str, int]] = ()) -> Mesh:
    """A mesh over ``devices`` (default: all) with named axes, e.g. ``(("data", -1), ("fsdp", 2))``.

    ``axes`` (``config.mesh``) are the fast-interconnect (ICI) axes: within one slice, or one process when
    ``dcn_axes`` is set. ``dcn_axes`` (``config.mesh_dcn``, names among ``axes``', missing ones 1) multiply
    them over the slow network: axis ``a`` has ``axes[a] * dcn_axes[a]`` devices, its outer factor across
    slices (TPU multi-slice: ``slice_index``) or, where devices have no slices (GPU nodes, CPU processes),
    across processes. One size of each may be -1 (what is left). The layout is
    ``mesh_utils.create_device_mesh`` (one slice) or ``create_hybrid_device_mesh`` (DCN product > 1).
    ShardingError (one line naming the setting and the numbers) when the sizes do not fit the devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    names, sizes = _axis_sizes(axes, "mesh")
    dcn_names, dcn_sizes = _axis_sizes(dcn_axes, "mesh_dcn")
    # a size-1 DCN entry is a no-op: the default names every axis, a mesh override may drop some
    unknown = [a for a, s in zip(dcn_names, dcn_sizes) if a not in names and s != 1]
    if unknown:
        raise ShardingError(f"mesh_dcn names {unknown}, which mesh {dict(zip(names, sizes))} does not have")
    dcn = dict(zip(dcn_names, dcn_sizes))
    if all(s == 1 for s in dcn_sizes):
        sizes = _resolve(names, sizes, len(devices), "mesh", "devices")
        return Mesh(_device_grid(sizes, devices), names)
    unit, granules = _granules(devices)
    dcn_sizes = _resolve(names, [dcn.get(a, 1) for a in names], len(granules), "mesh_dcn",
                         "processes" if unit == "process" else "slices")
    per = {len(g) for g in granules}
    if len(per) > 1:
        raise ShardingError(f"mesh_dcn {dict(zip(names, dcn_sizes))}: the {unit}s have unequal device counts "
                            f"{sorted(per)}")
    sizes = _resolve(names, sizes, per.pop(), "mesh", f"devices per {unit}")
    from jax.experimental import mesh_utils

    try:
        grid = mesh_utils.create_hybrid_device_mesh(sizes, dcn_sizes, devices, process_is_granule=unit == "process",
                                                    allow_split_physical_axes=True)
    except (ValueError, NotImplementedError) as e:
        raise ShardingError(f"mesh {dict(zip(names, sizes))} x mesh_dcn {dict(zip(names, dcn_sizes))}: "
                            f"{str(e).splitlines()[0]}") from e
    return Mesh(grid, names)


def mesh_from_config(config: Any) -> Mesh:
    """``make_mesh(config.mesh, dcn_axes=config.mesh_dcn)`` (``mesh_dcn`` optional: configs saved before it)."""
    return make_mesh(tuple(tuple(a) for a in config.mesh),
                     dcn_axes=tuple(tuple(a) for a in (config.get("mesh_dcn") or ())))


def process_grid(mesh: Mesh) -> np.ndarray:
    """The process index of each device of ``mesh`` (an int array of the mesh's shape)."""
    return np.vectorize(lambda d: d.process_index, otypes=[int])(mesh.devices)


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
    """Refuse (ShardingError, one line naming ``what`` and the numbers) a global batch that does not split
    into whole shards: it must divide over the batch axes' shards and over the processes, and each process
    must hold whole shards of its own (see :func:`check_batch_spans_processes`)."""
    n = batch_axes_size(rules, mesh)
    if global_batch < 1 or global_batch % n:
        raise ShardingError(f"{what} {global_batch} does not divide over the {n} data-parallel shards "
                            f"of mesh {dict(mesh.shape)}")
    if global_batch % jax.process_count():
        raise ShardingError(f"{what} {global_batch} does not divide over {jax.process_count()} hosts")
    check_batch_spans_processes(rules, mesh, f"{what} {global_batch}")


def check_batch_spans_processes(rules: Rules, mesh: Mesh, what: str = "batch") -> None:
    """Refuse a mesh on which a batch shard would live on several processes (the batch axes do not span
    the processes, e.g. ``mesh_dcn`` on ``tensor``): each process reads its own rows, so no two processes
    may need the same ones. In: the rules and the mesh; out: nothing, or ShardingError (one line)."""
    if jax.process_count() == 1:
        return
    n = batch_axes_size(rules, mesh)
    index = NamedSharding(mesh, batch_spec(rules, mesh)).devices_indices_map((n,))
    owners: dict[int, set] = {}
    for device, (rows,) in index.items():
        owners.setdefault(rows.start or 0, set()).add(device.process_index)
    shared = sorted(k for k, procs in owners.items() if len(procs) > 1)
    if shared:
        axes = batch_spec(rules, mesh)[0]
        raise ShardingError(f"{what}: mesh {dict(mesh.shape)} puts batch shard {shared[0]} (of {n}, on axes "
                            f"{axes}) on processes {sorted(owners[shared[0]])}; the batch axes must span the "
                            f"{jax.process_count()} processes (put the cross-process mesh_dcn factor on "
                            f"data or fsdp)")


def check_rules(rules: Rules, mesh: Mesh) -> None:
    """Refuse (ShardingError, one line) sharding rules that name a mesh axis the mesh lacks (they would
    silently leave that dimension replicated)."""
    for logical, axes in rules:
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        missing = [a for a in names if a not in mesh.shape]
        if missing:
            raise ShardingError(f"sharding_rules map {logical!r} to mesh axis {missing[0]!r}, which mesh "
                                f"{dict(mesh.shape)} lacks (axes: {', '.join(mesh.axis_names)})")


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
