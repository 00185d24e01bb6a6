"""Training → inference: assemble the three trained networks into one inference checkpoint directory.

    python export.py --vae WORKDIR --ldm WORKDIR --vocoder WORKDIR --out DIR
                                          [--no-ema] [--overwrite]

Each source is either a training workdir (``python -m audiosr_jax.cli.train``; its latest checkpoint is
read) or a converted AudioSR directory (``python -m audiosr_jax.convert``: has ``architecture.json``):

* ``--vae``: the "vae" group of a VAE-stage workdir (the exact AutoencoderKL tree);
* ``--ldm``: the "unet" group of an LDM-stage workdir, its EMA by default (``--no-ema``: the raw weights),
  the latent scale factor it was trained with (``ldm.scale_factor`` of its saved config, or that of its
  ``ldm.vae_from`` when the run took the scale from there), and its diffusion settings (``ldm.schedule``,
  ``schedule_kwargs``, ``num_timesteps``, ``parameterization``, and the objective: ``ldm.objective`` with its
  ``flow_*`` / ``bridge_noise`` settings, every `DiffusionConfig` field; a converted directory's own);
* ``--vocoder``: the "generator" group of a vocoder-stage workdir (the exact HiFiGAN tree).

The architectures come from each source's saved config (``model.<family>``) or ``architecture.json`` and
must fit together: the UNet was trained on the latents of one VAE architecture, and that must be the
exported VAE's. The result is what ``sample.py --checkpoint DIR`` loads (``checkpoint.load_weights``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np

from audiosr_jax import paths
from audiosr_jax.diffusion.config import DiffusionConfig
from audiosr_jax.errors import CheckpointError
from audiosr_jax.inference.checkpoint import (
    AudioSRWeights,
    abstract_params,
    check_output_dir,
    sampling_defaults,
    save_weights,
)
from audiosr_jax.training.stages import stage_class, stages_training

__all__ = ["export_weights"]

log = logging.getLogger(__name__)

# network family -> the command-line flag that names its source
_FLAGS = {"vae": "--vae", "unet": "--ldm", "vocoder": "--vocoder"}


@dataclasses.dataclass
class _Source:
    """One network of a workdir or a converted directory. Opened from its config alone (cheap, so every
    consistency check runs before any weights are read); ``params`` filled in by ``_load_params``."""

    path: str
    family: str
    config: Any  # the family's architecture dataclass
    train_config: dict | None = None  # the saved training config (workdirs)
    architecture: dict | None = None  # architecture.json (converted directories)
    step: int | None = None
    stage: str | None = None  # the workdir's stage, and the parameter group holding the family there
    group: str | None = None
    params: dict | None = None
    converted: Any = None  # AudioSRWeights of a converted directory, once loaded

    @property
    def is_converted(self) -> bool:
        return self.architecture is not None

    def describe(self) -> str:
        if self.is_converted:
            return f"{self.path} (converted)"
        return f"{self.path} (step {self.step})"


def _config_class(family: str):
    from audiosr_jax.models.unet import UNetConfig
    from audiosr_jax.models.vae import VAEConfig
    from audiosr_jax.models.vocoder import VocoderConfig

    return {"vae": VAEConfig, "unet": UNetConfig, "vocoder": VocoderConfig}[family]


def _parse_architecture(path: str, family: str, d: Any):
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: its config has no model.{family} architecture")
    try:
        return _config_class(family).from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid {family} architecture in its config: {e}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _open_source(path: str, family: str) -> _Source:
    """The architecture (and saved config) of ``path``'s ``family`` network, without its weights; one-line
    CheckpointError for a missing path, a workdir without checkpoints, or a workdir of a stage that does not
    train ``family``."""
    flag = _FLAGS[family]
    root = paths.resolve(path)
    if not root.exists():
        raise CheckpointError(f"{path}: no such directory (given as {flag})")
    arch_path = root / "architecture.json"
    if arch_path.is_file():
        try:
            arch = json.loads(arch_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{arch_path}: unreadable architecture file: {_first_line(e)}") from None
        if not isinstance(arch, dict):
            raise CheckpointError(f"{arch_path}: not an architecture file")
        return _Source(path, family, _parse_architecture(path, family, arch.get(family)), architecture=arch)
    if not root.is_dir():
        raise CheckpointError(f"{path}: not a training workdir or converted directory (given as {flag}; "
                              "convert a PyTorch checkpoint first: python -m audiosr_jax.convert IN OUT)")
    directory = root / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"{path}: neither a training workdir (no checkpoints/ folder) nor a converted "
                              f"directory (no architecture.json) (given as {flag})")
    import orbax.checkpoint as ocp

    try:
        mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
        step = mngr.latest_step()
        if step is None:
            raise CheckpointError(f"{path}: has no finished checkpoint in checkpoints/ (given as {flag})")
        cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises many types for corrupt/partial files
        raise CheckpointError(f"{path}: cannot read its latest checkpoint's config (corrupt?): {_first_line(e)}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: its latest checkpoint has no training config")
    saved_stage, training = cfg.get("stage"), stages_training(family)
    if saved_stage not in training:
        raise CheckpointError(f"{path}: is a workdir of stage {saved_stage}; {flag} needs one of a stage that "
                              f"trains the {family} network ({', '.join(training)})")
    arch = _parse_architecture(path, family, (cfg.get("model") or {}).get(family))
    return _Source(path, family, arch, train_config=cfg, step=int(step), stage=saved_stage,
                   group=training[saved_stage])


def _load_params(src: _Source, use_ema: bool, converted_cache: dict) -> None:
    """Fill ``src.params`` (host numpy): the converted directory's family, or the workdir's group from its
    latest checkpoint (EMA if ``use_ema`` and the run kept one)."""
    flag = _FLAGS[src.family]
    if src.is_converted:
        from audiosr_jax.inference.checkpoint import load_weights

        key = _canonical(src.path)
        if key not in converted_cache:  # --vae and --vocoder may name the same converted directory
            converted_cache[key] = load_weights(src.path)
        src.converted = converted_cache[key]
        src.params = src.converted.params[src.family]
        return
    from audiosr_jax.training.weights import read_trained_params

    try:
        src.params, _ = read_trained_params(src.path, src.group, prefer_ema=use_ema)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (given as {flag})") from None
    except Exception as e:  # orbax raises many types for corrupt/partial files
        raise CheckpointError(f"{src.path}: cannot read its latest checkpoint (corrupt?): {_first_line(e)}") from None


def _first_difference(a: dict, b: dict) -> tuple[str, Any, Any] | None:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return k, a.get(k), b.get(k)
    return None


def _ldm_vae_architecture(ldm: _Source):
    """The VAE architecture the UNet was trained with (the LDM run's model.vae, or the converted
    directory's own VAE)."""
    if ldm.is_converted:
        return _parse_architecture(ldm.path, "vae", ldm.architecture.get("vae"))
    return _parse_architecture(ldm.path, "vae", (ldm.train_config.get("model") or {}).get("vae"))


def _as_scale(value) -> float:
    try:
        sf = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return sf if math.isfinite(sf) and sf > 0 else float("nan")


def _scale_factor(ldm: _Source) -> float:
    """The latent scale the UNet was trained with. An LDM run saves it as ``ldm.scale_factor`` when it
    measured it or was given it; a run whose ``ldm.vae_from`` was a converted directory (or a workdir with a
    saved scale) used that one instead and kept 0 in its config (the LDM stage's ``from_config``): read it there."""
    if ldm.is_converted:
        sf = _as_scale(ldm.architecture.get("scale_factor"))
        if math.isnan(sf):
            raise CheckpointError(f"{ldm.path}: architecture.json has no usable scale_factor "
                                  f"({ldm.architecture.get('scale_factor')!r})")
        return sf
    lcfg = ldm.train_config.get("ldm") or {}
    sf = _as_scale(lcfg.get("scale_factor"))
    if not math.isnan(sf):
        return sf
    vae_from = lcfg.get("vae_from") or ""
    if vae_from and paths.resolve(vae_from).exists():
        try:
            arch_path = paths.resolve(vae_from) / "architecture.json"
            if arch_path.is_file():
                sf = _as_scale(json.loads(arch_path.read_text()).get("scale_factor"))
            else:
                vsrc = _open_source(vae_from, "vae")
                sf = _as_scale((vsrc.train_config.get("ldm") or {}).get("scale_factor"))
        except (OSError, ValueError, AttributeError, CheckpointError):
            sf = float("nan")
        if not math.isnan(sf):
            log.info("%s: latent scale factor %.6g from its ldm.vae_from %s", ldm.path, sf, vae_from)
            return sf
    raise CheckpointError(f"{ldm.path}: no usable latent scale factor (ldm.scale_factor="
                          f"{lcfg.get('scale_factor')!r}, none in ldm.vae_from={vae_from!r}); the LDM run "
                          "measures one at its first step")


def _diffusion(ldm: _Source) -> DiffusionConfig:
    """The schedule, parameterisation and objective the UNet was trained with: the LDM run's ``ldm`` settings
    (keys it lacks: the released model's; an older run without ``objective`` is "diffusion"), or a converted directory's ``diffusion`` entry."""
    try:
        if ldm.is_converted:
            return DiffusionConfig.from_dict(ldm.architecture.get("diffusion"))
        return DiffusionConfig.from_ldm_config(ldm.train_config.get("ldm"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ldm.path}: invalid diffusion settings in its config: {_first_line(e)}") from None


def _sampling(ldm: _Source) -> dict:
    """How the exported UNet is to be sampled: a converted directory's own "sampling", or what the workdir's
    stage says for its checkpoint (a distilled student: its step count and sampler); {} = the release's."""
    try:
        if ldm.is_converted:
            return sampling_defaults(ldm.architecture.get("sampling"))
        return sampling_defaults(stage_class(ldm.stage).exported_sampling(ldm.train_config, int(ldm.step)))
    except ValueError as e:
        raise CheckpointError(f"{ldm.path}: invalid sampling settings: {e}") from None


def _same_path(a: str, b: str) -> bool:
    return _canonical(a) == _canonical(b)


def _canonical(path: str) -> str:
    """One spelling per location: a local path resolved (symlinks too), a URI as resolved by `paths`."""
    return str(paths.resolve(path)) if paths.is_remote(path) else os.path.realpath(str(paths.resolve(path)))


def _trees_equal(a: dict, b: dict) -> bool:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    return len(la) == len(lb) and all(pa == pb and np.shape(x) == np.shape(y) and np.array_equal(x, y)
                                      for (pa, x), (pb, y) in zip(la, lb))


def _check_vae_provenance(vae: _Source, ldm: _Source) -> None:
    """Warn when the exported VAE is not the one the UNet's latents came from."""
    if ldm.is_converted:
        if not _trees_equal(ldm.converted.params["vae"], vae.params):
            log.warning("the UNet of %s was trained on that directory's VAE, but the VAE exported is %s "
                        "(different weights): the latents may not match", ldm.path, vae.path)
        return
    vae_from = (ldm.train_config.get("ldm") or {}).get("vae_from") or ""
    if not vae_from:
        log.warning("%s: its config does not say which VAE it was trained on (ldm.vae_from is empty)", ldm.path)
    elif not _same_path(vae_from, vae.path):
        log.warning("%s was trained on the VAE from %s, but the VAE exported is %s: the latents may not match",
                    ldm.path, vae_from, vae.path)


def _check_shapes(src: _Source, target: dict) -> None:
    """The params tree must be exactly the architecture's (same keys, same shapes)."""
    want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    got = {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(src.params)}
    for k in sorted(set(want) | set(got)):
        if k not in got:
            raise CheckpointError(f"{src.path}: its {src.family} parameters lack {k} (not the saved architecture)")
        if k not in want:
            raise CheckpointError(f"{src.path}: its {src.family} parameters have an unexpected {k}")
        if want[k] != got[k]:
            raise CheckpointError(f"{src.path}: its {src.family} parameter {k} has shape {got[k]}, "
                                  f"the architecture needs {want[k]}")


def _as_float32(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def export_weights(vae: str, ldm: str, vocoder: str, out: str, *, use_ema: bool = True,
                   overwrite: bool = False) -> AudioSRWeights:
    """Assemble (VAE, UNet, vocoder) from training workdirs / converted directories and write them to ``out``
    (an inference checkpoint directory, written atomically by ``checkpoint.save_weights``).

    vae / ldm / vocoder: a VAE-, LDM- (or distill-), vocoder-stage workdir or a converted AudioSR directory;
    a distilled student carries its step count and sampler into architecture.json ("sampling").
    use_ema: take the UNet's EMA weights (when the LDM run kept them). Returns the weights written.
    Raises CheckpointError (one line) for a missing or unreadable source, a workdir of the wrong stage,
    architectures that do not fit together, a missing scale factor, or an existing ``out`` without
    ``overwrite``. Warns (logging) when the VAE is not the one the LDM was trained on.
    """
    if paths.is_remote(out):
        raise CheckpointError(f"{out}: write the inference checkpoint to a local folder (then copy it); "
                              "--out cannot be an object store")
    out_abs = str(paths.resolve(out))
    for flag, src in (("--vae", vae), ("--ldm", ldm), ("--vocoder", vocoder)):
        s, o = _canonical(src), os.path.realpath(out_abs)
        if s == o or s.startswith(o + os.sep):  # replacing `out` would delete the source
            raise CheckpointError(f"{out}: the output overlaps the {flag} source {src}; choose another --out")
    check_output_dir(out_abs, overwrite)  # only a checkpoint of ours is ever replaced

    # 1. configs only: every refusal that needs no weights comes before reading gigabytes of them
    v, u, g = _open_source(vae, "vae"), _open_source(ldm, "unet"), _open_source(vocoder, "vocoder")

    trained_on = _ldm_vae_architecture(u)
    diff = _first_difference(trained_on.to_dict(), v.config.to_dict())
    if diff:
        k, a, b = diff
        raise CheckpointError(f"{ldm} was trained on a VAE with {k}={a!r}, but the VAE of {vae} has {k}={b!r}")
    if u.config.out_channels != v.config.embed_dim or u.config.in_channels != 2 * v.config.embed_dim:
        raise CheckpointError(f"{ldm}: UNet channels in={u.config.in_channels}/out={u.config.out_channels} do not "
                              f"fit the {v.config.embed_dim}-channel latents of {vae}")
    from audiosr_jax import audio

    hop = int(np.prod(g.config.upsample_rates))
    if g.config.num_mels != audio.N_MELS or hop != audio.HOP:
        raise CheckpointError(f"{vocoder}: the vocoder takes {g.config.num_mels} mel bins at hop {hop}; "
                              f"inference needs {audio.N_MELS} at hop {audio.HOP}")
    scale = _scale_factor(u)
    diffusion = _diffusion(u)

    # 2. the weights, checked against the architectures
    cache: dict = {}
    target = abstract_params(v.config, u.config, g.config)
    for src in (v, u, g):
        _load_params(src, use_ema, cache)
        _check_shapes(src, target[src.family])
    _check_vae_provenance(v, u)
    params = {"vae": _as_float32(v.params), "unet": _as_float32(u.params), "vocoder": _as_float32(g.params)}
    if u.converted is not None and "cond_vae" in u.converted.params:
        # the conditioning encoder belongs to the UNet: it saw its latents during training
        params["cond_vae"] = _as_float32(u.converted.params["cond_vae"])
    ema_note = ""
    if not u.is_converted:
        ema_note = " EMA" if use_ema else " raw (no EMA)"
    source = (f"audiosr_jax.training.export: vae={v.describe()}, unet={u.describe()}{ema_note}, "
              f"vocoder={g.describe()}")
    weights = AudioSRWeights(v.config, u.config, g.config, params, scale, source, diffusion,
                             sampling=_sampling(u))
    save_weights(weights, out_abs, overwrite=overwrite)
    return weights
