"""Open a PyTorch checkpoint (.bin, .pth, .ckpt, .safetensors) as a lazy, memory-mapped name → tensor map.

Nothing is copied when the file is opened: safetensors files are read through `safe_open`, and pickled torch
files through `torch.load(mmap=True, weights_only=True)`, so a 6 GB checkpoint costs page cache, not RAM.
A tensor becomes a float32 numpy array only when the converter asks for it; the dtype it is stored in stays
known (`stored_dtype`), for checks whose tolerance depends on it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

from audiosr_jax.errors import CheckpointError

__all__ = ["open_state_dict", "LazyTensor", "stored_dtype", "HALF_PRECISION"]

# dtype names of 16-bit float storage -> numpy dtypes (bfloat16 from ml_dtypes, which JAX ships)
HALF_PRECISION = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}

# safetensors dtype codes -> numpy-style names
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
                       "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}


class LazyTensor:
    """A tensor in a checkpoint: `.shape` and `.stored_dtype` (its dtype in the file, e.g. "float16") without
    reading it; `np.asarray(t)` reads it as float32."""

    def __init__(self, shape, load, stored_dtype: str = "float32"):
        self.shape = tuple(int(s) for s in shape)
        self.stored_dtype = stored_dtype
        self._load = load

    def __array__(self, dtype=None, copy=None):
        x = self._load()
        return x if dtype is None else x.astype(dtype, copy=False)


def stored_dtype(tensor) -> str:
    """The dtype name a state-dict entry is stored in ("float16", "bfloat16", "float32", ...).

    tensor: a LazyTensor (its dtype in the file, before the float32 read), a numpy array or a torch tensor
    (their own dtype), or anything `np.asarray` takes."""
    name = getattr(tensor, "stored_dtype", None)
    if name is not None:
        return name
    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        dtype = np.asarray(tensor).dtype
    return str(dtype).removeprefix("torch.")


class _StateDict(Mapping):
    def __init__(self, tensors: dict[str, LazyTensor], keepalive=None):
        self._tensors = tensors
        self._keepalive = keepalive  # the open file / mmap the tensors point into

    def __getitem__(self, key):
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self):
        return len(self._tensors)


def _open_safetensors(path: str) -> _StateDict:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(path, framework="numpy")
        keys = list(handle.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def loader(k):
        return lambda: np.asarray(handle.get_tensor(k), dtype=np.float32)

    tensors = {}
    for k in keys:
        info = handle.get_slice(k)
        code = info.get_dtype()
        tensors[k] = LazyTensor(info.get_shape(), loader(k), _SAFETENSORS_DTYPES.get(code, code.lower()))
    return _StateDict(tensors, keepalive=handle)


def _flatten_torch(obj, prefix: str, out: dict) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten_torch(v, f"{prefix}{k}.", out)


def _open_torch(path: str) -> _StateDict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading .bin/.pth/.ckpt files needs PyTorch "
                              "(pip install torch==2.13.0, the CPU build); or convert it to .safetensors") from None
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint (truncated or corrupt, or not a torch file)")
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError... for bad files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the PyTorch checkpoint (truncated or corrupt?): {msg}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    flat: dict = {}
    _flatten_torch(obj, "", flat)

    def loader(t):
        return lambda: t.detach().to(torch.float32).numpy()

    tensors = {k: LazyTensor(t.shape, loader(t), str(t.dtype).removeprefix("torch.")) for k, t in flat.items()}
    return _StateDict(tensors, keepalive=obj)


def open_state_dict(path: str | os.PathLike) -> Mapping[str, LazyTensor]:
    """Open a checkpoint as {key: LazyTensor}. A torch file's top-level {"state_dict": ...} is unwrapped.

    Raises CheckpointError (one line, naming the file) if the path is missing, empty, truncated or not a
    checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a .bin/.pth/.ckpt/.safetensors file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.endswith(".safetensors"):
        return _open_safetensors(path)
    return _open_torch(path)
