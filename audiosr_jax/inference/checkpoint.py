"""The inference checkpoint: a directory holding the weights (orbax) and the architecture (JSON).

Layout of DIR:
  architecture.json   {"format": "audiosr-jax/1", "vae": {...}, "unet": {...}, "vocoder": {...},
                       "scale_factor": float, "has_cond_vae": bool, "source": str,
                       "diffusion": {"schedule", "schedule_kwargs", "num_timesteps", "parameterization"
                                     [, "objective", "flow_time_sampling", "flow_logit_mean", "flow_logit_std",
                                        "flow_time_shift", "bridge_noise"]}}
                      ("diffusion": the UNet's training schedule/parameterisation and objective; absent = the
                      release's; the objective keys are written for flow/bridge models, absent = "diffusion")
                      [, "sampling": {"sampler", "steps", "guidance", "eta"} (any of them): how this model is
                      meant to be sampled, e.g. a distilled student's step count; absent = the release's defaults]
  params/             orbax StandardCheckpointer tree {"vae", "unet", "vocoder"[, "cond_vae"]}

`sample.py --checkpoint DIR` needs nothing else. Saving writes to a sibling temporary directory and renames
it into place, so an interrupted save never leaves a half-written checkpoint under DIR.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax import paths
from audiosr_jax.atomic import swap_in
from audiosr_jax.diffusion.config import DiffusionConfig
from audiosr_jax.errors import CheckpointError
from audiosr_jax.models.unet import UNetConfig, UNetModel
from audiosr_jax.models.vae import AutoencoderKL, VAEConfig
from audiosr_jax.models.vocoder import HiFiGAN, VocoderConfig

__all__ = ["AudioSRWeights", "save_weights", "load_weights", "check_output_dir", "is_checkpoint_dir", "abstract_params",
           "abstract_tree", "select_part", "FORMAT", "PARTS"]

FORMAT = "audiosr-jax/1"

# The weights each pipeline stage needs, as (top-level tree, sub-trees or None for all of it).
# "cond_encoder" reads "cond_vae" instead of "vae" when the checkpoint has a separate conditioning VAE.
PARTS = {
    "cond_encoder": ("vae", ("encoder", "quant_conv")),
    "unet": ("unet", None),
    "decoder": ("vae", ("decoder", "post_quant_conv")),
    "vocoder": ("vocoder", None),
}


@dataclasses.dataclass
class AudioSRWeights:
    """Everything inference needs. params: {"vae", "unet", "vocoder"} (+ "cond_vae": encoder and quant_conv
    of a conditioning VAE that differs from the first-stage one). scale_factor: the latent scale.
    diffusion: the schedule and parameterisation the UNet was trained with (default: the released model's).
    Weights loaded with `load_weights(..., lazy=True)` have empty params and read each stage's `part` from
    `directory` when asked (one network in memory at a time)."""

    vae: VAEConfig
    unet: UNetConfig
    vocoder: VocoderConfig
    params: dict[str, Any]
    scale_factor: float
    source: str = ""
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    directory: str = ""  # the checkpoint it was loaded from (lazy weights read their parts from here)
    sampling: dict = dataclasses.field(default_factory=dict)  # `sampling_defaults`: what sample.py uses unless told
    has_cond_vae: bool = False  # for lazy weights; resident ones answer from params

    @property
    def resident(self) -> bool:
        """Whether all params are in memory (False for lazy weights)."""
        return bool(self.params)

    def architecture(self) -> dict:
        return {"format": FORMAT, "vae": self.vae.to_dict(), "unet": self.unet.to_dict(),
                "vocoder": self.vocoder.to_dict(), "scale_factor": float(self.scale_factor),
                "has_cond_vae": "cond_vae" in self.params or self.has_cond_vae, "source": self.source,
                "diffusion": self.diffusion.to_dict(), **({"sampling": dict(self.sampling)} if self.sampling else {})}

    def part(self, name: str, sharding: jax.sharding.Sharding | None = None) -> dict:
        """The params of one pipeline stage (`PARTS`): "cond_encoder" and "decoder" (VAE param trees holding
        only those modules), "unet", "vocoder". Resident weights return a view of `params` (no copy; `sharding`
        is ignored); lazy ones restore just that part from the checkpoint, placed with `sharding`."""
        if self.resident:
            return select_part(self.params, name)
        return _restore_part(self, name, sharding)

    def abstract_part(self, name: str) -> dict:
        """ShapeDtypeStructs of `part(name)` (to compile a stage before its weights are read)."""
        return select_part(abstract_tree(self.vae, self.unet, self.vocoder, self.architecture()["has_cond_vae"]), name)


def select_part(params: dict, name: str) -> dict:
    """One stage's view (`PARTS`) of a full params tree, without copying; works on traced trees too."""
    if name not in PARTS:
        raise ValueError(f"unknown part {name!r}; expected one of {sorted(PARTS)}")
    top, subs = PARTS[name]
    if name == "cond_encoder" and "cond_vae" in params:
        top = "cond_vae"
    tree = params[top]
    return dict(tree) if subs is None else {k: tree[k] for k in subs}


@functools.lru_cache(maxsize=16)
def abstract_params(vae: VAEConfig, unet: UNetConfig, vocoder: VocoderConfig, frames: int = 64) -> dict:
    """Param shapes of the three networks ({"vae", "unet", "vocoder"} of ShapeDtypeStructs), via eval_shape.
    Cached per architecture (tracing the full model takes seconds); treat the result as read-only."""
    f = vae.downsample_factor
    key = jax.random.PRNGKey(0)
    mel = jax.ShapeDtypeStruct((1, frames, 256, 1), jnp.float32)
    latent_h, latent_w = frames // f, 256 // f
    x = jax.ShapeDtypeStruct((1, latent_h, latent_w, unet.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    vmel = jax.ShapeDtypeStruct((1, 8, vocoder.num_mels), jnp.float32)
    return {
        "vae": jax.eval_shape(AutoencoderKL(vae).init, key, mel)["params"],
        "unet": jax.eval_shape(UNetModel(unet).init, key, x, t)["params"],
        "vocoder": jax.eval_shape(HiFiGAN(vocoder).init, key, vmel)["params"],
    }


def abstract_tree(vae: VAEConfig, unet: UNetConfig, vocoder: VocoderConfig, has_cond_vae: bool) -> dict:
    """Shapes of a checkpoint's whole params tree: `abstract_params` plus "cond_vae" when it has one."""
    tree = dict(abstract_params(vae, unet, vocoder))
    if has_cond_vae:
        tree["cond_vae"] = select_part(tree, "cond_encoder")
    return tree


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory that `save_weights` wrote and nothing else touched: exactly
    ``architecture.json`` (of this format) and ``params/``. Only such a directory may be replaced."""
    path = os.fspath(path)
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    if sorted(os.listdir(path)) != ["architecture.json", "params"] or not os.path.isdir(os.path.join(path, "params")):
        return False
    try:
        with open(os.path.join(path, "architecture.json")) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(directory: str | os.PathLike, overwrite: bool) -> str:
    """Refuse an output checkpoint path that must not be written (one-line CheckpointError): an existing
    file, or an existing directory without `overwrite`, or one that is not itself a checkpoint of ours
    (replacing it would delete files this program did not write). Returns the absolute path."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: exists and is not a directory; the output must be a new or "
                              "checkpoint directory")
    if os.path.exists(directory):
        if not overwrite:
            raise CheckpointError(f"{directory}: already exists (pass overwrite=True / --overwrite to replace it)")
        if not is_checkpoint_dir(directory):
            raise CheckpointError(f"{directory}: not an audiosr-jax checkpoint (it holds other files); refusing "
                                  "to replace it, choose a new output directory")
    return directory


def save_weights(weights: AudioSRWeights, directory: str | os.PathLike, overwrite: bool = False) -> None:
    """Write `weights` to `directory` atomically: into a sibling temporary directory, then swapped in, so an
    interrupted save never leaves a half-written checkpoint and a failed one leaves the previous intact.
    An existing directory is replaced only with `overwrite` and only when it is a checkpoint of ours
    (`check_output_dir`)."""
    import orbax.checkpoint as ocp

    directory = check_output_dir(directory, overwrite)
    _check_finite(weights.params, directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, "params"), weights.params)
        ckptr.wait_until_finished()
        with open(os.path.join(tmp, "architecture.json"), "w") as f:
            json.dump(weights.architecture(), f, indent=2)
        old = tempfile.mkdtemp(prefix="." + os.path.basename(directory) + ".old-", dir=parent)
        os.rmdir(old)  # a free name beside it for the previous checkpoint
        swap_in(tmp, directory, aside=old)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# a checkpoint's own sampling settings, and their types; what it leaves out is the release's default
SAMPLING_KEYS = {"sampler": str, "steps": int, "guidance": float, "eta": float}


def sampling_defaults(d: Any) -> dict:
    """A checkpoint's "sampling" entry, checked: {"sampler": str, "steps": int >= 1, "guidance": float,
    "eta": float in [0, 1]} (any subset; None -> {}). ValueError for unknown keys or bad values."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"sampling must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; known: {sorted(SAMPLING_KEYS)}")
    out = {k: SAMPLING_KEYS[k](v) for k, v in d.items()}
    if out.get("steps", 1) < 1 or not 0.0 <= out.get("eta", 0.0) <= 1.0:
        raise ValueError(f"sampling settings out of range: {out}")
    return out


def load_weights(directory: str | os.PathLike, sharding: jax.sharding.Sharding | None = None,
                 lazy: bool = False) -> AudioSRWeights:
    """Read a checkpoint directory written by `save_weights` (or `python -m audiosr_jax.convert`).

    `sharding`: where to place every weight (e.g. replicated over a mesh); restoring straight into it avoids
    a second copy of the weights (2.7 GB at full size) when they are later used on that mesh.
    `lazy`: read only the architecture and check that the weights exist; `AudioSRWeights.part` then restores
    one stage's weights at a time (low-memory inference)."""
    import orbax.checkpoint as ocp
    from etils import epath

    root = paths.resolve(directory)  # a path or a URI (gs://...)
    directory = str(root)
    if not root.exists():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    arch_path = root / "architecture.json"
    if not arch_path.is_file():
        hint = " (a PyTorch file? convert it first: python -m audiosr_jax.convert IN OUT)" if root.is_file() else ""
        raise CheckpointError(f"{directory}: not an audiosr-jax checkpoint (no architecture.json){hint}")
    try:
        arch = json.loads(arch_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{arch_path}: unreadable architecture file: {e}") from None
    if arch.get("format") != FORMAT:
        raise CheckpointError(f"{directory}: checkpoint format {arch.get('format')!r}, expected {FORMAT!r}")
    try:
        vae, unet, voc = (VAEConfig.from_dict(arch["vae"]), UNetConfig.from_dict(arch["unet"]),
                          VocoderConfig.from_dict(arch["vocoder"]))
        diffusion = DiffusionConfig.from_dict(arch.get("diffusion"))
        sampling = sampling_defaults(arch.get("sampling"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{arch_path}: invalid architecture: {e}") from None
    target = abstract_tree(vae, unet, voc, bool(arch.get("has_cond_vae")))
    weights = AudioSRWeights(vae, unet, voc, {}, float(arch["scale_factor"]), arch.get("source", ""), diffusion,
                             directory=directory, has_cond_vae=bool(arch.get("has_cond_vae")), sampling=sampling)
    if lazy:
        try:
            ocp.PyTreeCheckpointHandler().metadata(epath.Path(ocp_path(directory)))
        except Exception as e:
            raise CheckpointError(f"{directory}: unreadable weights (corrupt or incomplete?): {_first_line(e)}") from None
        return weights
    if sharding is not None:
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), target)
    try:
        # this process alone: every process of a multi-host job loads the weights for its own devices
        weights.params = _process_local_checkpointer().restore(
            ocp_path(directory), args=ocp.args.PyTreeRestore(target, restore_args=_restore_args(target)))
    except Exception as e:  # orbax raises many types for missing/corrupt/mismatched files
        raise CheckpointError(f"{directory}: cannot restore the weights (corrupt or incomplete?): {_first_line(e)}") from None
    return weights


def _process_local_checkpointer():
    """An orbax checkpointer that reads for this process only: no barrier with the job's other processes."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=alone), multiprocessing_options=alone)


def _restore_args(target):
    """Restore arguments for an abstract tree: each leaf as a jax.Array with its sharding (default: the first
    local device), shape and dtype."""
    import orbax.checkpoint as ocp

    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=getattr(x, "sharding", None) or default,
                                                       global_shape=x.shape, dtype=x.dtype), target)


def ocp_path(directory: str) -> str:
    """The orbax tree inside a checkpoint directory."""
    return os.path.join(directory, "params")


def _first_line(e: Exception) -> str:
    msg = str(e).strip()
    return msg.splitlines()[0][:300] if msg else type(e).__name__


def _restore_part(weights: AudioSRWeights, name: str, sharding) -> dict:
    """Partial orbax restore of one `PARTS` entry of a lazy checkpoint, placed with `sharding` (devices of this
    process), by this process alone: no barrier with the other processes of a multi-process job."""
    import orbax.checkpoint as ocp

    tree = weights.abstract_part(name)  # raises for an unknown part
    top = "cond_vae" if name == "cond_encoder" and weights.has_cond_vae else PARTS[name][0]
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {top: tree}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=x.shape, dtype=x.dtype),
                                item)
    # This process alone: orbax's default is a barrier across every process of the job after each restore,
    # and the processes of a multi-host sampling job restore a different number of times (one per batch).
    try:
        out = _process_local_checkpointer().restore(
            ocp_path(weights.directory),
            args=ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True))
    except Exception as e:
        raise CheckpointError(f"{weights.directory}: cannot restore the {top} weights (corrupt or incomplete?): "
                              f"{_first_line(e)}") from None
    return out[top]


def _check_finite(params, where: str) -> None:
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(params)
           if not np.all(np.isfinite(np.asarray(x)))]
    if bad:
        raise CheckpointError(f"{where}: refusing to save non-finite weights in {', '.join(bad[:5])}")
