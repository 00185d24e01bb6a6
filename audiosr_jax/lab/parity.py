"""Compare audiosr-jax with reference outputs of the PyTorch AudioSR (made by tools/reference/make_fixtures.py).

A fixture directory holds `<width>_param_shapes.json` (the synthetic weights' keys, shapes, seeds, scale
factor and fingerprint), `frontend.npz`, `modules.npz` and `ddim.npz`. `compare(directory)` rebuilds the
same weights (the conditioning VAE's encoder with its own seed, so it differs from the first stage's),
converts them with our converter, runs every stage on the same inputs (and the reference's own noise for
the sampler; each UNet call of the DDIM run is recorded) and returns the error of each stage. Used by
tests/test_parity.py (reduced width, committed fixtures) and by tools/parity_report.py (any width, e.g. the
full-size model).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf

from audiosr_jax import audio
from audiosr_jax.convert.core import COND_VAE, VAE, convert_state_dict
from audiosr_jax.inference import lowpass, pipeline, postprocess
from audiosr_jax.inference.checkpoint import AudioSRWeights
from audiosr_jax.inference.pipeline import (
    Noise,
    SamplingOptions,
    super_resolve_waveform,
)
from audiosr_jax.lab.synthetic import fingerprint, parity_clip, synthetic_state_dict
from audiosr_jax.models.unet import UNetModel
from audiosr_jax.models.vae import AutoencoderKL
from audiosr_jax.models.vocoder import HiFiGAN

__all__ = ["reference_state_dict", "reference_weights", "swap_encoders", "compare", "rel_err", "snr_db",
           "log_mel_float64", "LOUD_LOG_MEL"]

# Log-mel error is judged where the mel is ≥ 30 dB above the 1e-5 floor: nearer the floor both fp32 codes
# carry FFT rounding noise of ~1e-3 in log units (the reference itself is that far from the float64 truth).
LOUD_LOG_MEL = -8.0


def rel_err(ours, ref) -> float:
    """max |ours − ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def snr_db(ours, ref) -> float:
    """10·log10(Σ ref² / Σ (ours − ref)²)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ours - ref) ** 2), 1e-300)))


def log_mel_float64(wave) -> np.ndarray:
    """The reference's log-mel [T, 256] of a 1-D 48 kHz waveform, in float64 with numpy (the ground truth)."""
    x = np.pad(np.asarray(wave, np.float64), (784, 784), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, 2048)[::480][: len(wave) // 480]
    mag = np.abs(np.fft.rfft(frames * np.hanning(2049)[:-1], axis=1))
    return np.log(np.maximum(mag @ audio.mel_filterbank().astype(np.float64).T, 1e-5))


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def reference_state_dict(directory: str) -> tuple[dict[str, np.ndarray], str]:
    """(torch-layout state dict, shapes file) of the synthetic weights the fixtures in `directory` were made with.

    Every key of the shapes file is `synthetic_tensor(key, shape, seed)` with the file's "seed", except keys
    under a "prefix_seeds" prefix, drawn with that prefix's seed: the conditioning VAE's encoder and quant_conv
    (`cond_stage_models.0.vae.`, seed 1), which thus differ from the first stage's. A fixture directory made
    before the conditioning VAE had weights of its own (no such keys) gets the release's copy of the
    first-stage encoder instead. Adds `scale_factor`.
    """
    [shapes_file] = glob.glob(os.path.join(directory, "*_param_shapes.json"))
    meta = json.load(open(shapes_file))
    prefix_seeds = meta.get("prefix_seeds", {})

    def seed_of(key):
        prefixes = [p for p in prefix_seeds if key.startswith(p)]
        return prefix_seeds[max(prefixes, key=len)] if prefixes else meta["seed"]

    by_seed: dict[int, dict] = {}
    for key, shape in meta["shapes"].items():
        by_seed.setdefault(int(seed_of(key)), {})[key] = shape
    drawn = {k: v for seed, shapes in by_seed.items() for k, v in synthetic_state_dict(shapes, seed=seed).items()}
    sd = {k: drawn[k] for k in meta["shapes"]}  # the file's order
    got = fingerprint(sd)
    if abs(got - meta["fingerprint"]) > 1e-12 * abs(meta["fingerprint"]):
        raise RuntimeError(f"{shapes_file}: weights fingerprint {got} != {meta['fingerprint']}: numpy's random "
                           "stream differs from the reference venv's; regenerate the fixtures")
    if not any(k.startswith(COND_VAE) for k in sd):
        for k in [k for k in sd if k.startswith(VAE + "encoder.") or k.startswith(VAE + "quant_conv.")]:
            sd[COND_VAE + k[len(VAE):]] = sd[k]  # as the release stores it: a copy of the first stage
    sd["scale_factor"] = np.float32(meta["scale_factor"])
    return sd, shapes_file


def reference_weights(directory: str) -> AudioSRWeights:
    """The synthetic weights the fixtures in `directory` were made with, converted by our converter (a
    conditioning VAE of its own becomes params["cond_vae"])."""
    sd, shapes_file = reference_state_dict(directory)
    weights, report = convert_state_dict(sd, origin=shapes_file)
    own_cond = any(k.startswith(COND_VAE) and not np.array_equal(v, sd.get(VAE + k[len(COND_VAE):]))
                   for k, v in sd.items())
    if own_cond != ("cond_vae" in weights.params):
        raise RuntimeError(f"{shapes_file}: the converter's conditioning VAE ({report.cond_vae}) does not match "
                           f"the state dict (own conditioning-VAE weights: {own_cond})")
    return weights


def swap_encoders(weights: AudioSRWeights) -> AudioSRWeights:
    """The same weights with the first-stage and the conditioning encoders (encoder + quant_conv) exchanged:
    what a pipeline that mixed the two up would compute. Needs a separate params["cond_vae"]."""
    p = weights.params
    vae = dict(p["vae"], encoder=p["cond_vae"]["encoder"], quant_conv=p["cond_vae"]["quant_conv"])
    cond = {"encoder": p["vae"]["encoder"], "quant_conv": p["vae"]["quant_conv"]}
    return AudioSRWeights(weights.vae, weights.unet, weights.vocoder, dict(p, vae=vae, cond_vae=cond),
                          weights.scale_factor, source=weights.source + " (encoders swapped)",
                          diffusion=weights.diffusion)


# The UNet outputs of the pipeline's own DDIM run, reported by `pipeline.generate`'s observe_unet hook.
_UNET_CALLS: list = []


def _record_unet_call(t, v):
    _UNET_CALLS.append((np.asarray(t), np.asarray(v)))


def _generate_with_unet_calls(weights: AudioSRWeights, lowpass_mel, noise: Noise, options: SamplingOptions):
    """generate()'s outputs plus "cond" (the sampled condition latent) and {(t, "cond"|"uncond"): v [B, ...]}."""
    _UNET_CALLS.clear()
    out = jax.tree.map(np.asarray, pipeline.generate(weights, lowpass_mel, noise, options,
                                                     observe_unet=_record_unet_call))
    jax.effects_barrier()
    calls = {}
    for t, v in _UNET_CALLS:
        if options.guidance == 1.0:  # the conditional branch only
            calls[(int(t[0]), "cond")] = v
            continue
        batch = len(t) // 2  # one call on [cond; uncond]
        calls[(int(t[0]), "cond")], calls[(int(t[batch]), "uncond")] = v[:batch], v[batch:]
    _UNET_CALLS.clear()
    return out, calls


def _stft_cutoff_bin(wave_out, wave_lowpass) -> int:
    """The cutoff row of `postprocess.replace_low_stft` for one item."""
    return int(postprocess.stft_cutoff_bin(jnp.asarray(wave_out)[None], jnp.asarray(wave_lowpass)[None])[0])


def _log_mel_errors(ours, ref, wave) -> dict[str, float]:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    truth = log_mel_float64(wave)
    loud = ref > LOUD_LOG_MEL
    return {"max_abs_loud": float(np.abs(ours - ref)[loud].max()), "max_abs_all": float(np.abs(ours - ref).max()),
            "ours_vs_float64": float(np.abs(ours - truth).max()), "ref_vs_float64": float(np.abs(ref - truth).max())}


def compare(directory: str, weights: AudioSRWeights | None = None) -> dict[str, float]:
    """Run every compared stage; returns {metric: value}. Relative errors are max|Δ|/max|ref| (fp32); integer
    results (bins, call counts) are returned as floats."""
    weights = weights or reference_weights(directory)
    fe, mod, dd = (np.load(os.path.join(directory, n)) for n in ("frontend.npz", "modules.npz", "ddim.npz"))
    out: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, "clip.wav")
        sf.write(clip, parity_clip(48000, 3.0), 48000, subtype="FLOAT")
        wave, info = audio.prepare_waveform(clip)
    out["waveform_max_abs"] = float(np.abs(wave - fe["waveform"]).max())
    log_mel, stft = audio.log_mel_spectrogram(jnp.asarray(wave))
    for k, v in _log_mel_errors(log_mel[0], fe["log_mel"], wave[0]).items():
        out[f"log_mel_{k}"] = v
    lp, cutoff = lowpass.prepare_lowpass(wave[0], np.asarray(stft[0]))
    out["cutoff_hz_ours"], out["cutoff_hz_ref"] = float(cutoff), float(fe["cutoff_hz"])
    out["lowpass_waveform_max_abs"] = float(np.abs(lp - fe["lowpass_waveform"].reshape(lp.shape)).max())
    lp_mel, _ = audio.log_mel_spectrogram(jnp.asarray(fe["lowpass_waveform"]).reshape(1, -1))
    for k, v in _log_mel_errors(lp_mel[0], fe["lowpass_mel"], fe["lowpass_waveform"].ravel()).items():
        out[f"lowpass_mel_{k}"] = v
    out["mel_cutoff_bin_equal"] = float(
        int(postprocess.mel_cutoff_bin(jnp.asarray(fe["lowpass_mel"])[None])[0]) == int(fe["mel_cutoff_bin"]))

    vae, p = AutoencoderKL(weights.vae), {"params": weights.params["vae"]}
    mean, logvar = vae.apply(p, jnp.asarray(_nhwc(mod["vae_in"])), method=AutoencoderKL.encode)
    out["vae_mean_rel"], out["vae_logvar_rel"] = rel_err(mean, _nhwc(mod["vae_mean"])), rel_err(logvar, _nhwc(mod["vae_logvar"]))
    dec = vae.apply(p, jnp.asarray(_nhwc(mod["vae_mean"])), method=AutoencoderKL.decode)
    out["vae_decode_rel"] = rel_err(dec, _nhwc(mod["vae_dec_out"]))

    unet = UNetModel(weights.unet)
    x, c = _nhwc(mod["unet_x"]), _nhwc(mod["unet_cond"])
    t = jnp.full((1,), int(mod["unet_t"]), jnp.int32)
    for name, cond in (("cond", c), ("uncond", np.full_like(c, float(mod["unet_uncond_value"])))):
        v = unet.apply({"params": weights.params["unet"]}, jnp.concatenate([x, cond * weights.scale_factor], -1), t)
        out[f"unet_{name}_rel"] = rel_err(v, _nhwc(mod[f"unet_out_{name}"]))

    wav = HiFiGAN(weights.vocoder).apply({"params": weights.params["vocoder"]},
                                          jnp.asarray(np.transpose(mod["voc_in"], (0, 2, 1))))
    out["vocoder_rel"] = rel_err(wav, mod["voc_out"].reshape(wav.shape))

    # Sampler: the reference's draws are [unused first-stage posterior eps, condition eps, x_T, one per step].
    steps = int(dd["ddim_steps"])
    noise = Noise(cond_eps=jnp.asarray(_nhwc(dd["noise_1"])), x_T=jnp.asarray(_nhwc(dd["noise_2"])),
                  steps=jnp.stack([jnp.asarray(_nhwc(dd[f"noise_{3 + i}"])) for i in range(steps)]))
    options = SamplingOptions(steps=steps, guidance=float(dd["guidance_scale"]), eta=float(dd["ddim_eta"]))
    gen, calls = _generate_with_unet_calls(weights, jnp.asarray(fe["lowpass_mel"])[None], noise, options)
    out["ddim_cond_rel"] = rel_err(gen["cond"], _nhwc(dd["ddim_cond"]))
    for i, name in enumerate(dd["unet_call_names"]):  # "t=501 cond", "t=501 uncond", "t=1 cond", "t=1 uncond"
        t, kind = re.fullmatch(r"t=(\d+) (cond|uncond)", str(name)).groups()
        out[f"unet_call_{i}_rel"] = rel_err(calls[(int(t), kind)], _nhwc(dd[f"unet_call_{i}"]))
    out["unet_calls_ours"] = float(len(calls))
    out["ddim_latent_rel"] = rel_err(gen["latent"], _nhwc(dd["ddim_latent"]))
    out["ddim_mel_rel"] = rel_err(gen["mel"], dd["ddim_mel"][:, 0])
    out["ddim_mel_replaced_rel"] = rel_err(gen["mel_replaced"], dd["ddim_mel_replaced"][:, 0])
    k = int(fe["mel_cutoff_bin"])  # below it the reference copies lowpass_mel exactly
    low = gen["mel_replaced"][..., :k] - dd["ddim_mel_replaced"][:, 0, :, :k]
    out["ddim_mel_replaced_low_max_abs"] = float(np.abs(low).max())
    out["ddim_vocoder_snr_db"] = snr_db(gen["waveform"], dd["ddim_waveform_vocoder"].reshape(gen["waveform"].shape))
    out["stft_cutoff_bin_ours"] = float(_stft_cutoff_bin(gen["waveform"][0], fe["lowpass_waveform"]))
    out["stft_cutoff_bin_ref"] = float(fe["stft_cutoff_bin"])
    info = dict(info, samples=wave.shape[1] + 16)  # keep the whole padded output, as the reference returns it
    final, info = super_resolve_waveform(weights, wave, info, options, noise=noise)
    out["final_waveform_snr_db"] = snr_db(final[0], dd["ddim_waveform"].ravel()[: final.shape[1]])
    out["final_waveform_rel"] = rel_err(final[0], dd["ddim_waveform"].ravel()[: final.shape[1]])
    return out
