"""PyTorch ↔ Flax layer rules: one table entry per layer, read in both directions.

A network family's converter is a list of `Rule`s (torch module name, Flax module path, layer kind). From
that one list we get: torch → Flax params, Flax → torch state dict (for test checkpoints and export), the
exact set of expected torch keys (to name missing and unexpected ones), and per-tensor shape checks.

Layouts (PyTorch → Flax):
  linear            weight [out, in]            → kernel [in, out]
  conv1d            weight [out, in, k]         → kernel [k, in, out]
  conv2d            weight [out, in, kh, kw]    → kernel [kh, kw, in, out]
  conv_transpose1d  weight [in, out, k]         → kernel [k, in, out], flipped in k (nn.ConvTranspose with
                                                  explicit padding k-1-p on both sides equals torch's)
  norm              weight, bias                → scale, bias (GroupNorm, LayerNorm)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from audiosr_jax.errors import CheckpointError

__all__ = ["Rule", "ConversionError", "TensorSource", "to_flax", "to_torch", "expected_keys",
           "set_path", "get_path"]


class ConversionError(CheckpointError):
    """A checkpoint cannot be converted; the message names the file, key(s) and the problem."""


def _linear_w(w):
    return w.T


def _linear_w_inv(k):
    return k.T


def _conv1d_w(w):
    return w.transpose(2, 1, 0)


def _conv2d_w(w):
    return w.transpose(2, 3, 1, 0)


def _conv2d_w_inv(k):
    return k.transpose(3, 2, 0, 1)


def _convt1d_w(w):
    return w.transpose(2, 0, 1)[::-1]


def _convt1d_w_inv(k):
    return k[::-1].transpose(1, 2, 0)


def _identity(x):
    return x


# kind → (torch param name → (flax param name, forward, inverse))
_KINDS: dict[str, dict[str, tuple[str, Callable, Callable]]] = {
    "linear": {"weight": ("kernel", _linear_w, _linear_w_inv), "bias": ("bias", _identity, _identity)},
    "linear_nobias": {"weight": ("kernel", _linear_w, _linear_w_inv)},
    "conv1d": {"weight": ("kernel", _conv1d_w, _conv1d_w), "bias": ("bias", _identity, _identity)},
    "conv2d": {"weight": ("kernel", _conv2d_w, _conv2d_w_inv), "bias": ("bias", _identity, _identity)},
    "conv_transpose1d": {"weight": ("kernel", _convt1d_w, _convt1d_w_inv),
                         "bias": ("bias", _identity, _identity)},
    "norm": {"weight": ("scale", _identity, _identity), "bias": ("bias", _identity, _identity)},
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One layer: `torch` is the module name inside the family's prefix ("encoder.conv_in"), `flax` the
    module path in the Flax param tree (("encoder", "conv_in")), `kind` a key of the layout table above."""

    torch: str
    flax: tuple[str, ...]
    kind: str

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}")

    def params(self) -> Iterable[tuple[str, str, Callable, Callable]]:
        """(torch key, flax leaf name, torch→flax, flax→torch) for each tensor of this layer."""
        for tname, (fname, fwd, inv) in _KINDS[self.kind].items():
            yield f"{self.torch}.{tname}", fname, fwd, inv


class TensorSource:
    """Read-only view of a (possibly memory-mapped) state dict under a key prefix.

    `tensors` maps full key → an array-like (numpy array, memmap, or anything `np.asarray` accepts);
    values are fetched lazily, one at a time, so a 6 GB checkpoint is never copied whole.
    """

    def __init__(self, tensors: Mapping[str, Any], prefix: str = "", origin: str = "checkpoint"):
        self._tensors = tensors
        self.prefix = prefix
        self.origin = origin

    def sub(self, prefix: str) -> "TensorSource":
        return TensorSource(self._tensors, self.prefix + prefix, self.origin)

    def has(self, key: str) -> bool:
        return self.prefix + key in self._tensors

    def keys(self) -> list[str]:
        """Keys under this view's prefix, with the prefix removed."""
        n = len(self.prefix)
        return [k[n:] for k in self._tensors if k.startswith(self.prefix)]

    def shape(self, key: str) -> tuple[int, ...]:
        full = self.prefix + key
        if full not in self._tensors:
            raise ConversionError(f"{self.origin}: missing key {full!r}")
        return tuple(int(s) for s in self._tensors[full].shape)

    def get(self, key: str) -> np.ndarray:
        full = self.prefix + key
        if full not in self._tensors:
            raise ConversionError(f"{self.origin}: missing key {full!r}")
        return np.asarray(self._tensors[full], dtype=np.float32)


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def get_path(tree: Mapping, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def expected_keys(rules: Iterable[Rule]) -> list[str]:
    """Every torch key (relative to the family prefix) the rules read."""
    return [key for rule in rules for key, *_ in rule.params()]


def to_flax(rules: Iterable[Rule], source: TensorSource, target_shapes: Mapping | None = None) -> dict:
    """Build a Flax param tree from `source` following `rules`.

    All missing keys are collected and reported together. If `target_shapes` (a param tree of
    ShapeDtypeStructs, e.g. from `jax.eval_shape(model.init, ...)`) is given, every converted tensor's
    shape is checked against it and every Flax param the rules never fill is named.
    """
    rules = list(rules)
    missing = [source.prefix + k for k in expected_keys(rules) if not source.has(k)]
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ConversionError(f"{source.origin}: {len(missing)} missing key(s): {', '.join(missing[:10])}{more}")
    params: dict = {}
    mismatched = []
    for rule in rules:
        for key, leaf, fwd, _ in rule.params():
            value = np.ascontiguousarray(fwd(source.get(key)))
            path = (*rule.flax, leaf)
            if target_shapes is not None:
                try:
                    want = tuple(get_path(target_shapes, path).shape)
                except (KeyError, TypeError):
                    raise ConversionError(f"{source.origin}: key {source.prefix + key!r} maps to "
                                          f"{'/'.join(path)}, which the model does not have") from None
                if want != value.shape:
                    mismatched.append(f"{source.prefix + key} {tuple(source.shape(key))} "
                                      f"(model expects {_torch_shape(rule.kind, leaf, want)})")
            set_path(params, path, value)
    if mismatched:
        raise ConversionError(f"{source.origin}: {len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:5]))
    if target_shapes is not None:
        unfilled = sorted(set(_leaf_paths(target_shapes)) - set(_leaf_paths(params)))
        if unfilled:
            raise ConversionError(f"{source.origin}: model params not in the checkpoint: "
                                  + ", ".join("/".join(p) for p in unfilled[:10]))
    return params


def to_torch(rules: Iterable[Rule], params: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """The inverse of `to_flax`: a torch-layout state dict {prefix + key: array} from a Flax param tree."""
    out = {}
    for rule in rules:
        for key, leaf, _, inv in rule.params():
            out[prefix + key] = np.ascontiguousarray(inv(np.asarray(get_path(params, (*rule.flax, leaf)))))
    return out


def _torch_shape(kind: str, leaf: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    inv = {"kernel": dict(linear=_linear_w_inv, linear_nobias=_linear_w_inv, conv1d=_conv1d_w,
                          conv2d=_conv2d_w_inv, conv_transpose1d=_convt1d_w_inv)}.get(leaf, {}).get(kind)
    return tuple(inv(np.empty(flax_shape, dtype=np.bool_)).shape) if inv else flax_shape


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaf_paths(v, (*prefix, k))
    else:
        yield prefix
