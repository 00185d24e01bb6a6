"""Compare audiosr-jax with reference outputs of the PyTorch AudioSR (made by tools/reference/make_fixtures.py).

A fixture directory holds `<width>_param_shapes.json` (the synthetic weights' keys, shapes, seed, scale
factor and fingerprint), `frontend.npz`, `modules.npz` and `ddim.npz`. `compare(directory)` rebuilds the
same weights, converts them with our converter, runs every stage on the same inputs (and the reference's
own noise for the sampler) and returns the error of each stage. Used by tests/test_parity.py (reduced
width, committed fixtures) and by tools/parity_report.py (any width, e.g. the full-size model).
"""

from __future__ import annotations

import glob
import json
import os
import tempfile

import jax.numpy as jnp
import numpy as np
import soundfile as sf

from audiosr_jax import audio, lowpass, postprocess
from audiosr_jax.checkpoint import AudioSRWeights
from audiosr_jax.convert.core import COND_VAE, VAE, convert_state_dict
from audiosr_jax.models.unet import UNetModel
from audiosr_jax.models.vae import AutoencoderKL
from audiosr_jax.models.vocoder import HiFiGAN
from audiosr_jax.pipeline import Noise, SamplingOptions, generate, super_resolve_waveform
from audiosr_jax.synthetic import fingerprint, parity_clip, synthetic_state_dict

__all__ = ["reference_weights", "compare", "rel_err", "snr_db", "log_mel_float64", "LOUD_LOG_MEL"]

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


def reference_weights(directory: str) -> AudioSRWeights:
    """The synthetic weights the fixtures in `directory` were made with, converted by our converter."""
    [shapes_file] = glob.glob(os.path.join(directory, "*_param_shapes.json"))
    meta = json.load(open(shapes_file))
    sd = synthetic_state_dict(meta["shapes"], seed=meta["seed"])
    got = fingerprint(sd)
    if abs(got - meta["fingerprint"]) > 1e-12 * abs(meta["fingerprint"]):
        raise RuntimeError(f"{shapes_file}: weights fingerprint {got} != {meta['fingerprint']}: numpy's random "
                           "stream differs from the reference venv's; regenerate the fixtures")
    for k in [k for k in sd if k.startswith(VAE + "encoder.") or k.startswith(VAE + "quant_conv.")]:
        sd[COND_VAE + k[len(VAE):]] = sd[k]  # the release stores the conditioning VAE as a copy
    sd["scale_factor"] = np.float32(meta["scale_factor"])
    weights, _ = convert_state_dict(sd, origin=shapes_file)
    return weights


def _log_mel_errors(ours, ref, wave) -> dict[str, float]:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    truth = log_mel_float64(wave)
    loud = ref > LOUD_LOG_MEL
    return {"max_abs_loud": float(np.abs(ours - ref)[loud].max()), "max_abs_all": float(np.abs(ours - ref).max()),
            "ours_vs_float64": float(np.abs(ours - truth).max()), "ref_vs_float64": float(np.abs(ref - truth).max())}


def compare(directory: str, weights: AudioSRWeights | None = None) -> dict[str, float]:
    """Run every compared stage; returns {metric: value}. Relative errors are max|Δ|/max|ref| (fp32)."""
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
    gen = generate(weights, jnp.asarray(fe["lowpass_mel"])[None], noise, options)
    out["ddim_latent_rel"] = rel_err(gen["latent"], _nhwc(dd["ddim_latent"]))
    out["ddim_mel_rel"] = rel_err(gen["mel"], dd["ddim_mel"][:, 0])
    out["ddim_vocoder_snr_db"] = snr_db(gen["waveform"], dd["ddim_waveform_vocoder"].reshape(gen["waveform"].shape))
    info = dict(info, samples=wave.shape[1] + 16)  # keep the whole padded output, as the reference returns it
    final, info = super_resolve_waveform(weights, wave, info, options, noise=noise)
    out["final_waveform_snr_db"] = snr_db(final[0], dd["ddim_waveform"].ravel()[: final.shape[1]])
    out["final_waveform_rel"] = rel_err(final[0], dd["ddim_waveform"].ravel()[: final.shape[1]])
    return out
