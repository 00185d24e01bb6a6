"""The AudioSR inference pipeline: wiring only, no maths of its own.

    waveform (48 kHz, normalised, padded) ──low-pass prep (host, scipy)──▶ low-passed waveform
      ──log-mel (JAX)──▶ condition mel ──VAE encode + posterior sample──▶ c
      ──sampler (DDIM by default) with CFG over UNet([x_t, c·scale])──▶ z ──VAE decode(z/scale)──▶ mel
      ──low-band mel copy──▶ HiFi-GAN ──low-band STFT copy, output normalisation──▶ 48 kHz waveform

`generate` is one jitted XLA program from the condition mel to the vocoder waveform (the sampler is a
`lax.scan`, guidance batched into one UNet call). All randomness enters as an explicit `Noise` value, so a
run is a deterministic function of (weights, audio, noise) and the PyTorch reference's own noise can be
injected for parity.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax import audio
from audiosr_jax.diffusion import flow, flow_samplers, sampling
from audiosr_jax.diffusion.samplers import classifier_free_guidance
from audiosr_jax.errors import AudioError
from audiosr_jax.inference import lowpass, postprocess, progress
from audiosr_jax.inference.checkpoint import AudioSRWeights, select_part
from audiosr_jax.models.unet import UNetModel
from audiosr_jax.models.vae import AutoencoderKL, posterior_sample
from audiosr_jax.models.vocoder import HiFiGAN

__all__ = ["Noise", "SamplingOptions", "SAMPLERS", "compute_params", "item_keys", "draw_noise", "latent_shape",
           "num_sampler_steps", "generate", "super_resolve_windows", "super_resolve_windows_low_memory", "super_resolve",
           "super_resolve_waveform", "UNCONDITIONAL_LATENT"]

# The "unconditional" condition: a constant latent (docs/design.md §Conditioning), scaled like a real one.
UNCONDITIONAL_LATENT = -11.4981


class SamplingOptions(NamedTuple):
    """How to sample. sampler: "ddim" (the reference's, stochastic with eta), "dpmpp_2m" (DPM-Solver++(2M)),
    "unipc" (UniPC), "euler" or "heun" (probability-flow ODE; Heun makes 2·steps − 1 network calls), the last
    four deterministic on a log-SNR grid from the largest t with ᾱ > 0 (998 for AudioSR); dtype: compute
    dtype of the networks ("float32" or "bfloat16": products accumulate in float32, norms and the waveform
    stay float32; the batch runner holds the kernels in it, `compute_params`). The schedule and parameterisation
    come from the weights (`AudioSRWeights.diffusion`). Flow/bridge-objective weights take "euler", "heun"
    or "midpoint" (2·steps calls) on the flow ODE, on the shifted uniform grid; eta is ignored there."""

    steps: int = 50
    guidance: float = 3.5
    eta: float = 1.0
    sampler: str = "ddim"
    dtype: str = "float32"
    progress: bool = False  # tick `inference.progress` after every network call (a host callback)


SAMPLERS = sampling.SAMPLERS


class Noise(NamedTuple):
    """Every random draw of one run. cond_eps, x_T: [B, h, w, C] latents; steps: [S, B, h, w, C]."""

    cond_eps: jax.Array
    x_T: jax.Array
    steps: jax.Array


def latent_shape(frames: int, weights: AudioSRWeights) -> tuple[int, int, int]:
    """(h, w, C) of the latent for a mel of `frames` frames × 256 bins."""
    f = weights.vae.downsample_factor
    return frames // f, audio.N_MELS // f, weights.vae.embed_dim


def item_keys(seed: int, channels, windows) -> jax.Array:
    """One PRNG key per batch item from (seed, channel index, window index): an item's noise does not depend
    on what else is in its batch, so batched and one-file runs of the same file give the same output."""
    base = jax.random.PRNGKey(seed)
    return jnp.stack([jax.random.fold_in(jax.random.fold_in(base, int(c)), int(w)) for c, w in zip(channels, windows)])


def draw_noise(keys: jax.Array, latent: tuple[int, int, int], num_steps: int) -> Noise:
    """Standard normal draws for a batch, item i from keys[i]: condition posterior, start latent, one per step."""

    def one(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return (jax.random.normal(k1, latent), jax.random.normal(k2, latent),
                jax.random.normal(k3, (num_steps, *latent)))

    cond_eps, x_T, steps = jax.vmap(one)(keys)
    return Noise(cond_eps, x_T, jnp.swapaxes(steps, 0, 1))


def num_sampler_steps(options: SamplingOptions, weights: AudioSRWeights | None = None) -> int:
    """Length of the noise.steps axis the sampler takes (`sampling.num_noise_steps`) for the schedule of
    `weights` (default: the released model's 1000 steps; DDIM's length depends on it). Flow/bridge samplers take
    no per-step noise; they are given `steps` (so the value also counts steps)."""
    if weights is not None and weights.diffusion.objective != "diffusion":
        return int(options.steps)
    num_timesteps = 1000 if weights is None else weights.diffusion.num_timesteps
    return sampling.num_noise_steps(options.sampler, options.steps, num_timesteps)


def compute_params(params, options: SamplingOptions):
    """The weights as the networks consume them under `options`: every kernel (a floating array of ≥ 2
    dimensions) in the compute dtype, everything else (biases, norm scales) as it is. Returns `params` itself
    in float32. The networks cast their kernels to the compute dtype on every call; holding them cast saves
    converting the weights each time (in bf16 on the CPU, ~0.1 s of a 0.4 s guided UNet call) and halves
    their memory. Works on host (numpy) and device arrays and on `jax.ShapeDtypeStruct`s alike."""
    dtype = jnp.dtype(options.dtype)
    if dtype == jnp.float32:
        return params

    def cast(x):
        if not (jnp.issubdtype(x.dtype, jnp.floating) and len(x.shape) >= 2 and x.dtype != dtype):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree.map(cast, params)


def _networks(configs, options: SamplingOptions):
    dtype = jnp.dtype(options.dtype)
    vae_cfg, unet_cfg, voc_cfg, _ = configs
    return AutoencoderKL(vae_cfg, dtype=dtype), UNetModel(unet_cfg, dtype=dtype), HiFiGAN(voc_cfg, dtype=dtype)


# The four stages, each a pure function of its own part of the weights (`AudioSRWeights.part`), so the
# pipeline runs either as one program (`_generate_body`) or stage by stage with one network in memory.
def _encode_condition(enc_params, lowpass_mel, cond_eps, configs, options: SamplingOptions):
    vae, _, _ = _networks(configs, options)
    mean, logvar = vae.apply({"params": enc_params}, lowpass_mel[..., None], method=AutoencoderKL.encode)
    return posterior_sample(mean, logvar, cond_eps)


def _sample_latent(unet_params, scale_factor, cond, x_T, step_noise, configs, options: SamplingOptions,
                   observe_unet=None):
    _, unet, _ = _networks(configs, options)
    diffusion = configs[3]
    uncond = jnp.full_like(cond, UNCONDITIONAL_LATENT)

    def model(x, t, c):
        pred = unet.apply({"params": unet_params}, jnp.concatenate([x, c * scale_factor], axis=-1), t)
        if options.progress:
            jax.debug.callback(progress.tick, t[:1])  # unordered: the device does not wait for the host
        pred = pred.astype(jnp.float32)
        if observe_unet is not None:
            jax.debug.callback(observe_unet, t, pred)
        return pred

    denoise = classifier_free_guidance(model, cond, uncond, options.guidance)  # in the model's parameterisation
    if diffusion.objective != "diffusion":
        return _sample_flow_latent(denoise, scale_factor, cond, x_T, diffusion, options)
    return sampling.sample(options.sampler, denoise, x_T, diffusion.alphas_cumprod(), options.steps,
                           parameterization=diffusion.parameterization, eta=options.eta, noise=step_noise)


def _sample_flow_latent(velocity, scale_factor, cond, x_T, diffusion, options: SamplingOptions):
    """A flow/bridge model: its ODE from t = 1 to 0 (`flow_samplers`), guidance on the velocity (affine, so the
    same `classifier_free_guidance`). The start is x_T (flow) or c·scale_factor + σ_b·x_T (bridge: x_T is the ε
    of the start point). The UNet's time input is t·num_timesteps (`flow.network_time`). eta is not used."""
    sampling.check_options(diffusion, options.sampler, options.steps)
    x1 = x_T if diffusion.objective == "flow" else flow.bridge_start(cond * scale_factor, x_T, diffusion.bridge_noise)

    def unet_velocity(x, t):  # t ∈ [0, 1] → the UNet's t·T
        return velocity(x, flow.network_time(t, diffusion.num_timesteps))

    return flow_samplers.sample(options.sampler, unet_velocity, x1.astype(x_T.dtype), options.steps,
                                diffusion.flow_time_shift)


def _decode_mel(dec_params, scale_factor, latent, configs, options: SamplingOptions):
    vae, _, _ = _networks(configs, options)
    return vae.apply({"params": dec_params}, latent / scale_factor, method=AutoencoderKL.decode)[..., 0]


def _vocode(voc_params, mel, lowpass_mel, configs, options: SamplingOptions):
    _, _, vocoder = _networks(configs, options)
    mel_replaced = postprocess.replace_low_mel(mel, lowpass_mel)
    return mel_replaced, vocoder.apply({"params": voc_params}, mel_replaced)


def _generate_body(params, scale_factor, lowpass_mel, noise: Noise, configs, options: SamplingOptions,
                   observe_unet=None):
    cond = _encode_condition(select_part(params, "cond_encoder"), lowpass_mel, noise.cond_eps, configs, options)
    latent = _sample_latent(params["unet"], scale_factor, cond, noise.x_T, noise.steps, configs, options,
                            observe_unet)
    mel = _decode_mel(select_part(params, "decoder"), scale_factor, latent, configs, options)
    mel_replaced, waveform = _vocode(params["vocoder"], mel, lowpass_mel, configs, options)
    return {"cond": cond, "latent": latent, "mel": mel, "mel_replaced": mel_replaced, "waveform": waveform}


@functools.partial(jax.jit, static_argnames=("configs", "options", "observe_unet"))
def _generate(params, scale_factor, lowpass_mel, noise: Noise, *, configs, options: SamplingOptions,
              observe_unet=None):
    return _generate_body(params, scale_factor, lowpass_mel, noise, configs, options, observe_unet)


@functools.partial(jax.jit, static_argnames=("configs", "options", "replace_low_band"))
def _super_resolve_windows(params, scale_factor, lowpassed, noise: Noise, *, configs, options: SamplingOptions,
                           replace_low_band: bool):
    lowpass_mel, _ = audio.log_mel_spectrogram(lowpassed)
    out = _generate_body(params, scale_factor, lowpass_mel, noise, configs, options)
    return postprocess.replace_low_stft(out["waveform"], lowpassed) if replace_low_band else out["waveform"]


def _configs(weights: AudioSRWeights):
    return (weights.vae, weights.unet, weights.vocoder, weights.diffusion)


def generate(weights: AudioSRWeights, lowpass_mel: jax.Array, noise: Noise,
             options: SamplingOptions = SamplingOptions(), observe_unet=None) -> dict[str, jax.Array]:
    """Condition mel [B, T, 256] (log-mel of the low-passed input) → dict of cond [B, T/8, 32, 16] (the
    sampled condition latent, unscaled), latent [B, T/8, 32, 16], mel [B, T, 256] (decoded), mel_replaced
    [B, T, 256], waveform [B, 480·T+16].

    ``observe_unet(t, v)``, if given, is called on the host for every UNet call with its timesteps t [B'] and
    output v [B', T/8, 32, 16] float32 (B' = 2B when guidance ≠ 1: the conditional half first), in no
    guaranteed order; call ``jax.effects_barrier()`` before reading what it collected. For parity checks and
    debugging; it is part of the compiled program's cache key (pass the same function to reuse it)."""
    return _generate(weights.params, jnp.float32(weights.scale_factor), lowpass_mel, noise,
                     configs=_configs(weights), options=options, observe_unet=observe_unet)


def super_resolve_windows(weights: AudioSRWeights, lowpassed: jax.Array, noise: Noise,
                          options: SamplingOptions = SamplingOptions(), params=None,
                          replace_low_band: bool = True) -> jax.Array:
    """The device part of the pipeline, one XLA program: low-passed windows [B, N] (48 kHz, normalised,
    N a multiple of 245,760) → log-mel → sampling → decode → mel copy → vocoder → STFT low-band copy →
    [B, N + 16] (not yet normalised). `params` overrides weights.params (e.g. a device-sharded copy).
    With replace_low_band=False the vocoder output is returned before the STFT copy (the batch engine does
    that copy per file, with one energy ratio per channel)."""
    return _super_resolve_windows(weights.params if params is None else params, jnp.float32(weights.scale_factor),
                                  lowpassed, noise, configs=_configs(weights), options=options,
                                  replace_low_band=replace_low_band)


_STAGES = {name: jax.jit(fn, static_argnames=("configs", "options")) for name, fn in
           [("cond_encoder", _encode_condition), ("unet", _sample_latent), ("decoder", _decode_mel),
            ("vocoder", _vocode)]}
_log_mel = jax.jit(lambda x: audio.log_mel_spectrogram(x)[0])
_replace_low_stft = jax.jit(postprocess.replace_low_stft)


@functools.lru_cache(maxsize=32)
def _compiled_stage_cached(name, configs, options, param_shapes, arg_shapes):
    params = jax.tree.unflatten(param_shapes[0], param_shapes[1])
    return _STAGES[name].lower(params, *arg_shapes, configs=configs, options=options).compile()


def _compiled_stage(name, weights: AudioSRWeights, configs, options, sharding, args):
    """The stage's XLA executable for these argument shapes, compiled from abstract weights (cached)."""
    part = compute_params(weights.abstract_part(name), options)
    if sharding is not None:
        part = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), part)
    leaves, treedef = jax.tree.flatten(part)
    arg_shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)) for a in args)
    return _compiled_stage_cached(name, configs, options, (treedef, tuple(leaves)), arg_shapes)


def super_resolve_windows_low_memory(weights: AudioSRWeights, lowpassed: jax.Array, noise: Noise,
                                     options: SamplingOptions = SamplingOptions(), sharding=None,
                                     replace_low_band: bool = True) -> jax.Array:
    """`super_resolve_windows` stage by stage, holding one network's weights at a time: for lazy weights
    (`load_weights(..., lazy=True)`) each stage restores its part from the checkpoint (placed with
    `sharding`) and frees it before the next, so the peak is the largest network plus its activations
    instead of all the weights plus the largest activations. Same maths, same noise; four programs instead
    of one. Resident weights work too (nothing is freed). [B, N] → [B, N + 16]."""
    from audiosr_jax import memory

    configs, scale = _configs(weights), jnp.float32(weights.scale_factor)
    if sharding is not None:
        scale = jax.device_put(scale, sharding)

    def run(name, *args):
        # Compile before the weights are read: compilation's transient memory never meets them.
        program = _compiled_stage(name, weights, configs, options, sharding, args)
        memory.release_free_memory()
        params = compute_params(weights.part(name, sharding), options)
        if weights.resident and sharding is not None:
            params = jax.device_put(params, sharding)  # a no-op where they already are
        try:
            # Wait for the stage: with asynchronous dispatch the next stage's weights would otherwise be read
            # while this one still runs (and holds its own).
            return jax.block_until_ready(program(params, *args))
        finally:
            if not weights.resident:
                for leaf in jax.tree.leaves(params):
                    leaf.delete()
                del params
                memory.release_free_memory()

    lowpass_mel = _log_mel(lowpassed)
    cond = run("cond_encoder", lowpass_mel, noise.cond_eps)
    latent = run("unet", scale, cond, noise.x_T, noise.steps)
    mel = run("decoder", scale, latent)
    _, waveform = run("vocoder", mel, lowpass_mel)
    return _replace_low_stft(waveform, lowpassed) if replace_low_band else waveform


def super_resolve(weights: AudioSRWeights, path: str | os.PathLike, options: SamplingOptions = SamplingOptions(),
                  seed: int = 42, max_channels: int = 2, noise: Noise | None = None) -> tuple[np.ndarray, dict]:
    """Super-resolve one file: `audio.prepare_waveform` then `super_resolve_waveform`."""
    wave, info = audio.prepare_waveform(path, max_channels=max_channels)
    return super_resolve_waveform(weights, wave, info, options, seed=seed, noise=noise, name=os.fspath(path))


def super_resolve_waveform(weights: AudioSRWeights, wave: np.ndarray, info: dict,
                           options: SamplingOptions = SamplingOptions(), seed: int = 42, noise: Noise | None = None,
                           name: str = "<waveform>", filter_type: str = lowpass.FILTER_TYPE) -> tuple[np.ndarray, dict]:
    """wave: [C, N] float32 at 48 kHz, normalised and padded as `audio.prepare_waveform` returns it.
    Returns (waveform [C, n] float32 at 48 kHz, info with "cutoff_hz" added).

    `filter_type`: the condition's low-pass family (the batch engine's default is the official tool's draw
    for the seed, `lowpass.filter_type("official", seed)`). Every channel is processed (channels form the batch). The whole padded signal is one sequence, as in the
    reference (no windowing: `batch.run_batch`, which sample.py uses, windows audio longer than 10.24 s and
    equals this for shorter audio). The output keeps the input's duration (the reference's 5.12 s padding is
    cut off) and is normalised as the reference does (peak 0.5, zero mean). Raises AudioError for
    non-finite model output.
    """
    prepared = [lowpass.prepare_lowpass(ch, ftype=filter_type) for ch in wave]
    lowpassed = np.stack([p[0] for p in prepared]).astype(np.float32)
    info = dict(info, cutoff_hz=[float(p[1]) for p in prepared])
    if noise is None:
        channels = range(wave.shape[0])
        noise = draw_noise(item_keys(seed, channels, [0] * wave.shape[0]),
                           latent_shape(wave.shape[1] // audio.HOP, weights), num_sampler_steps(options, weights))
    waveform = super_resolve_windows(weights, jnp.asarray(lowpassed), noise, options)
    waveform = np.asarray(postprocess.normalize_output(waveform))
    if not np.all(np.isfinite(waveform)):
        raise AudioError(f"{name}: the model produced non-finite samples (NaN/inf); nothing written")
    n_out = int(info["samples"])
    return waveform[:, :n_out], info
