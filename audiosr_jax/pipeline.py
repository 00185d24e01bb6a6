"""The AudioSR inference pipeline: wiring only, no maths of its own.

    waveform (48 kHz, normalised, padded) ──low-pass prep (host, scipy)──▶ low-passed waveform
      ──log-mel (JAX)──▶ condition mel ──VAE encode + posterior sample──▶ c
      ──DDIM with CFG over UNet([x_t, c·scale])──▶ z ──VAE decode(z/scale)──▶ mel
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

from audiosr_jax import audio, lowpass, postprocess
from audiosr_jax.checkpoint import AudioSRWeights
from audiosr_jax.diffusion.samplers import classifier_free_guidance, ddim_sample, ddim_tables
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod
from audiosr_jax.errors import AudioError
from audiosr_jax.models.unet import UNetModel
from audiosr_jax.models.vae import AutoencoderKL, posterior_sample
from audiosr_jax.models.vocoder import HiFiGAN

__all__ = ["Noise", "SamplingOptions", "draw_noise", "latent_shape", "generate", "super_resolve", "super_resolve_waveform",
           "UNCONDITIONAL_LATENT"]

# The "unconditional" condition: a constant latent (AUDIOSR.md §1.4), scaled like a real one.
UNCONDITIONAL_LATENT = -11.4981


class SamplingOptions(NamedTuple):
    steps: int = 50
    guidance: float = 3.5
    eta: float = 1.0


class Noise(NamedTuple):
    """Every random draw of one run. cond_eps, x_T: [B, h, w, C] latents; steps: [S, B, h, w, C]."""

    cond_eps: jax.Array
    x_T: jax.Array
    steps: jax.Array


def latent_shape(frames: int, weights: AudioSRWeights) -> tuple[int, int, int]:
    """(h, w, C) of the latent for a mel of `frames` frames × 256 bins."""
    f = weights.vae.downsample_factor
    return frames // f, audio.N_MELS // f, weights.vae.embed_dim


def draw_noise(key: jax.Array, batch: int, latent: tuple[int, int, int], num_steps: int) -> Noise:
    """Standard normal draws for one run: condition posterior, start latent, one per sampler step."""
    k1, k2, k3 = jax.random.split(key, 3)
    return Noise(jax.random.normal(k1, (batch, *latent)), jax.random.normal(k2, (batch, *latent)),
                 jax.random.normal(k3, (num_steps, batch, *latent)))


def num_sampler_steps(options: SamplingOptions) -> int:
    return len(ddim_tables(cosine_alphas_cumprod(), options.steps, options.eta).timesteps)


@functools.partial(jax.jit, static_argnames=("configs", "options"))
def _generate(params, scale_factor, lowpass_mel, noise: Noise, *, configs, options: SamplingOptions):
    vae_cfg, unet_cfg, voc_cfg = configs
    vae, unet, vocoder = AutoencoderKL(vae_cfg), UNetModel(unet_cfg), HiFiGAN(voc_cfg)
    cond_params = params.get("cond_vae", params["vae"])
    mean, logvar = vae.apply({"params": cond_params}, lowpass_mel[..., None], method=AutoencoderKL.encode)
    cond = posterior_sample(mean, logvar, noise.cond_eps)
    uncond = jnp.full_like(cond, UNCONDITIONAL_LATENT)

    def model(x, t, c):
        return unet.apply({"params": params["unet"]}, jnp.concatenate([x, c * scale_factor], axis=-1), t)

    tables = ddim_tables(cosine_alphas_cumprod(), options.steps, options.eta)
    denoise = classifier_free_guidance(model, cond, uncond, options.guidance)
    latent = ddim_sample(denoise, noise.x_T, noise.steps, tables)
    mel = vae.apply({"params": params["vae"]}, latent / scale_factor, method=AutoencoderKL.decode)[..., 0]
    mel_replaced = postprocess.replace_low_mel(mel, lowpass_mel)
    waveform = vocoder.apply({"params": params["vocoder"]}, mel_replaced)
    return {"latent": latent, "mel": mel, "mel_replaced": mel_replaced, "waveform": waveform}


def generate(weights: AudioSRWeights, lowpass_mel: jax.Array, noise: Noise,
             options: SamplingOptions = SamplingOptions()) -> dict[str, jax.Array]:
    """Condition mel [B, T, 256] (log-mel of the low-passed input) → dict of
    latent [B, T/8, 32, 16], mel [B, T, 256] (decoded), mel_replaced [B, T, 256], waveform [B, 480·T+16]."""
    configs = (weights.vae, weights.unet, weights.vocoder)
    return _generate(weights.params, jnp.float32(weights.scale_factor), lowpass_mel, noise,
                     configs=configs, options=options)


def super_resolve(weights: AudioSRWeights, path: str | os.PathLike, options: SamplingOptions = SamplingOptions(),
                  seed: int = 42, max_channels: int = 2, noise: Noise | None = None) -> tuple[np.ndarray, dict]:
    """Super-resolve one file: `audio.prepare_waveform` then `super_resolve_waveform`."""
    wave, info = audio.prepare_waveform(path, max_channels=max_channels)
    return super_resolve_waveform(weights, wave, info, options, seed=seed, noise=noise, name=os.fspath(path))


def super_resolve_waveform(weights: AudioSRWeights, wave: np.ndarray, info: dict,
                           options: SamplingOptions = SamplingOptions(), seed: int = 42, noise: Noise | None = None,
                           name: str = "<waveform>") -> tuple[np.ndarray, dict]:
    """wave: [C, N] float32 at 48 kHz, normalised and padded as `audio.prepare_waveform` returns it.
    Returns (waveform [C, n] float32 at 48 kHz, info with "cutoff_hz" added).

    Every channel is processed (channels form the batch). The output keeps the input's duration (the
    reference's 5.12 s padding is cut off) and is normalised as the reference does (peak 0.5, zero mean).
    Raises AudioError for non-finite model output.
    """
    prepared = [lowpass.prepare_lowpass(ch) for ch in wave]
    lowpassed = np.stack([p[0] for p in prepared]).astype(np.float32)
    info = dict(info, cutoff_hz=[float(p[1]) for p in prepared])
    lowpass_mel, _ = audio.log_mel_spectrogram(jnp.asarray(lowpassed))
    if noise is None:
        noise = draw_noise(jax.random.PRNGKey(seed), wave.shape[0], latent_shape(lowpass_mel.shape[1], weights),
                           num_sampler_steps(options))
    out = generate(weights, lowpass_mel, noise, options)
    waveform = postprocess.replace_low_stft(out["waveform"], jnp.asarray(lowpassed))
    waveform = np.asarray(postprocess.normalize_output(waveform))
    if not np.all(np.isfinite(waveform)):
        raise AudioError(f"{name}: the model produced non-finite samples (NaN/inf); nothing written")
    n_out = int(info["samples"])
    return waveform[:, :n_out], info
