"""The released weights in one step: a model name, a checkpoint directory or a PyTorch file → a converted
checkpoint directory, fetched and converted once, reused after.

    resolve_checkpoint("basic")   # haoheliu/audiosr_basic: pytorch_model.bin from the hub → converted, cached
    resolve_checkpoint("speech")  # haoheliu/audiosr_speech
    resolve_checkpoint("model.bin"), resolve_checkpoint("ckpt_dir/")

The hub download uses `huggingface_hub` (its own cache, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1 for no
network); the conversion goes to `<cache>/converted/<name>-<hub revision>/` (cache: $AUDIOSR_JAX_HOME or
~/.cache/audiosr_jax), written atomically, so an interrupted conversion is redone and a finished one reused.
Reading the .bin needs torch (CPU build) only for that one conversion.
"""

from __future__ import annotations

import hashlib
import os

from audiosr_jax.errors import CheckpointError

__all__ = ["RELEASES", "resolve_checkpoint"]

# model name → (hub repository, file), as the official tool downloads them (audiosr 0.0.7)
RELEASES = {
    "basic": ("haoheliu/audiosr_basic", "pytorch_model.bin"),
    "speech": ("haoheliu/audiosr_speech", "pytorch_model.bin"),
}
_TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".safetensors")


def resolve_checkpoint(model: str | os.PathLike, cache_dir: str | None = None) -> str:
    """A converted checkpoint directory for `model`: a released model name (`RELEASES`), an existing
    checkpoint directory or a URI of one (``gs://...``; returned as is), or a PyTorch checkpoint file
    (converted once into the cache). Raises CheckpointError (one line) for an unknown name, a missing path
    or a failed download."""
    from audiosr_jax import paths, runtime

    model = os.fspath(model)
    cache = os.path.join(cache_dir or runtime.cache_root(), "converted")
    if paths.is_remote(model):  # a URI is never a hub name: load_weights reads it (or says why not)
        return model
    if paths.scheme(model) == "file":
        model = str(paths.resolve(model))
    if os.path.isdir(model):
        return model
    if os.path.isfile(model):
        if not model.endswith(_TORCH_SUFFIXES):
            raise CheckpointError(f"{model}: not a checkpoint directory or a PyTorch checkpoint file "
                                  f"({', '.join(_TORCH_SUFFIXES)})")
        st = os.stat(model)
        tag = hashlib.sha256(f"{os.path.realpath(model)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return _converted(model, os.path.join(cache, f"{os.path.splitext(os.path.basename(model))[0]}-{tag}"))
    if model in RELEASES:
        path = _download(model)
        revision = os.path.basename(os.path.dirname(path))  # the hub cache's snapshot (commit) folder
        return _converted(path, os.path.join(cache, f"{model}-{revision[:16]}"))
    raise CheckpointError(f"{model}: checkpoint does not exist (expected a checkpoint directory, a PyTorch file, "
                          f"or a released model: {', '.join(sorted(RELEASES))})")


def _download(name: str) -> str:
    repo, filename = RELEASES[name]
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(f"--model {name} needs huggingface_hub: pip install huggingface_hub") from None
    try:
        return hf_hub_download(repo_id=repo, filename=filename)
    except Exception as e:  # offline without a cached copy, network or auth errors: one line
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise CheckpointError(f"{repo}/{filename}: cannot fetch the released weights ({msg})") from None


def _converted(src: str, directory: str) -> str:
    """`directory` holding the conversion of `src`, made now if it is not there yet."""
    from audiosr_jax.inference.checkpoint import is_checkpoint_dir

    if is_checkpoint_dir(directory):
        return directory
    from audiosr_jax.convert import convert_file

    convert_file(src, directory, overwrite=os.path.exists(directory))
    return directory
