"""Stage ``ldm``: the latent diffusion UNet on the frozen VAE's scaled latents.

Per example (48 kHz waveform crops from the loader): normalise as the reference does (remove the mean,
peak 0.5), low-pass (host pair from the loader, or the filter applied on device), log-mel both (with
``data.lowpass = "device_stft"``: both mels from one STFT, the filter's gain applied to it), encode
both with the frozen VAE (posterior *samples*, as AudioSR), scale by ``scale_factor``; with probability
``cfg_drop_prob`` (once per batch as the reference, or per example) the condition becomes the constant
−11.4981 latent; t ~ U{0..T−1}; loss = the configured objective (AudioSR: MSE on v, cosine schedule with
zero terminal SNR; with ``ldm.mask_above_bandwidth`` and a batch ``bandwidth_hz`` [B], only the latent
frequency rows below each clip's own bandwidth count: :func:`masked_diffusion_loss`). The UNet input is
``concat([x_t, cond · scale_factor], channels)``.

``ldm.objective`` = "flow" / "bridge" (:mod:`audiosr_jax.diffusion.flow`): t ∈ [0, 1] from the flow time law,
x_t = (1 − t)·z + t·x₁ with x₁ = ε (flow) or cond · scale_factor + σ_b·ε (bridge, from the *real* condition
even where the dropout blanked the UNet's copy: sampling always starts from it), the UNet sees t·T and the
loss is the MSE on u = x₁ − z under the same band mask. "diffusion" is the above, unchanged.

Shapes: batch "audio" [B, N] float32 48 kHz, N a multiple of 480 · 8 · 2^(UNet levels − 1) samples
(30,720 = 0.64 s for the released architecture); latents [B, N/3840, 32, C].
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax import audio
from audiosr_jax.degrade import degrade_on_device, log_mels_with_condition
from audiosr_jax.diffusion import flow, objectives
from audiosr_jax.diffusion.config import DiffusionConfig
from audiosr_jax.diffusion.schedules import make_alphas_cumprod
from audiosr_jax.errors import CheckpointError, UserError
from audiosr_jax.inference.pipeline import UNCONDITIONAL_LATENT
from audiosr_jax.models.unet import UNetConfig, UNetModel
from audiosr_jax.models.vae import AutoencoderKL, VAEConfig, posterior_sample
from audiosr_jax.training import state as st
from audiosr_jax.training.stages import Stage
from audiosr_jax.training.weights import architectures, check_architecture, load_group


def normalize_pair(wave: jax.Array, low: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """The reference's ``normalize_wav`` per example ([B, N]): x − mean, scaled to peak 0.5. The same
    affine map is applied to the low-passed copy (a low-pass passes DC), so the pair stays consistent."""
    mean = jnp.mean(wave, axis=-1, keepdims=True)
    scale = 0.5 / (jnp.max(jnp.abs(wave - mean), axis=-1, keepdims=True) + 1e-8)
    return (wave - mean) * scale, None if low is None else (low - mean) * scale


def lowpassed(batch: dict, wave: jax.Array, low: jax.Array | None) -> jax.Array:
    """The low-passed input: the loader's host pair, or the filter applied here on device."""
    if low is not None:
        return low
    if "lowpass_params" in batch:
        return degrade_on_device(wave, batch["lowpass_params"])
    raise ValueError("batch has neither 'lowpass' nor 'lowpass_params': set data.lowpass to host or device")


def pair_log_mels(batch: dict, stft_lowpass: bool = False) -> jax.Array:
    """Log-mels of the normalised target and its low-passed condition: [2B, T, 256] (targets first).

    ``stft_lowpass`` (``data.lowpass = "device_stft"``): both from one STFT of the normalised waveform,
    the condition as ``|STFT| · G(f_k)`` (:func:`audiosr_jax.degrade.log_mels_with_condition`). The
    waveform is normalised *before* the STFT, so the condition is the filter's gain on exactly what
    ``"device"`` filters (scaling a raw STFT instead would not do: the mean is not only DC there, the Hann
    window spreads it to bin 1 = 23.4 Hz, inside the first mel filter). Otherwise: one batched
    ``log_mel_spectrogram`` of ``concat([target, lowpassed])``.
    """
    if stft_lowpass:
        if "lowpass_params" not in batch:
            raise ValueError("data.lowpass='device_stft' needs the batch's 'lowpass_params' (the loader ships "
                             "them in this mode)")
        wave, _ = normalize_pair(batch["audio"], None)
        target, cond = log_mels_with_condition(wave, batch["lowpass_params"])
        return jnp.concatenate([target, cond], axis=0)
    wave, low = normalize_pair(batch["audio"], batch.get("lowpass"))
    low = lowpassed(batch, wave, low)
    return audio.log_mel_spectrogram(jnp.concatenate([wave, low], axis=0))[0]


def latent_band_mask(bandwidth_hz: jax.Array, n_rows: int) -> jax.Array:
    """[B] clip bandwidths (Hz, the dataset's ``bandwidth_hz``) -> [B, 1, n_rows, 1] float32 mask over the
    latent's frequency rows: 1 where the row's lowest mel band starts below the clip's bandwidth, else 0.

    Row ``j`` holds mel bands ``[j·r, (j+1)·r)``, r = 256 / n_rows (the VAE's frequency downsampling). Above a
    clip's own bandwidth its target is the log floor, not music: fitting it would teach the model to leave
    that band empty."""
    import librosa

    edges = librosa.mel_frequencies(audio.N_MELS + 2, fmin=audio.MEL_FMIN, fmax=audio.MEL_FMAX, htk=False)
    row_start = jnp.asarray(edges[: audio.N_MELS : audio.N_MELS // n_rows], jnp.float32)
    bw = jnp.asarray(bandwidth_hz, jnp.float32).reshape(-1, 1)
    return (row_start[None, :] < bw).astype(jnp.float32)[:, None, :, None]


def masked_diffusion_loss(pred, x0, eps, alpha_bar, mask, parameterization: str = "v",
                          weighting: str = "uniform", gamma: float = 5.0) -> jax.Array:
    """:func:`objectives.diffusion_loss` over the unmasked entries only: per example the mean squared error over
    the entries where ``mask`` (broadcast to ``x0``'s shape, [B, T, F, C]) is 1, then weighted and averaged over
    the batch. Entries where it is 0 do not change the loss or its gradient."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = jnp.asarray(alpha_bar, jnp.float32).reshape(shape)
    target = objectives.training_target(parameterization, x0, eps, jnp.sqrt(a), jnp.sqrt(1.0 - a))
    mask = jnp.broadcast_to(mask, x0.shape)
    axes = tuple(range(1, x0.ndim))
    err = jnp.where(mask > 0, jnp.square(pred.astype(jnp.float32) - target), 0.0)
    per_example = jnp.sum(err, axis=axes) / jnp.maximum(jnp.sum(mask, axis=axes), 1.0)
    return jnp.mean(objectives.loss_weight(weighting, parameterization, alpha_bar, gamma) * per_example)


log = logging.getLogger(__name__)


class LDMStage(Stage):
    """The LDM stage: ``init`` -> trained params {"unet"}; ``train_step`` and ``eval_step`` are pure.

    Frozen: {"vae": the ``ldm.vae_from`` VAE's params, "scale_factor": float32 (0 until ``prepare``)}."""

    name = "ldm"
    groups = ("unet",)
    ema_groups = ("unet",)
    families = {"unet": "unet"}

    @classmethod
    def from_config(cls, config: Any) -> tuple["LDMStage", dict]:
        """The stage and its frozen VAE (from ``ldm.vae_from``: a converted directory or a VAE workdir); the
        scale is ``ldm.scale_factor`` if set, else the source's, else 0 (measured in ``prepare``)."""
        if not config.ldm.vae_from:
            raise CheckpointError("stage ldm needs a trained VAE: set --config.ldm.vae_from=DIR "
                                  "(a converted AudioSR directory or a VAE training workdir)")
        vae_cfg, unet_cfg, _ = architectures(config.model)
        vae_params, info = load_group(config.ldm.vae_from, "vae")
        check_architecture(config.ldm.vae_from, "vae", info["architecture"], config.model.vae.to_dict())
        scale = float(config.ldm.scale_factor) if config.ldm.scale_factor > 0 else info["scale_factor"]
        frozen = {"vae": vae_params, "scale_factor": np.float32(scale if scale else 0.0)}
        return cls(config, vae_cfg, unet_cfg, jnp.dtype(config.train.compute_dtype)), frozen

    def prepare(self, frozen: dict, batch: dict, key: jax.Array, saved_config: dict | None) -> tuple[dict, dict]:
        """The latent scale actually used goes into the saved config (the workdir is then self-contained for
        export and resume): the frozen one if set, else the resumed run's, else 1/std of this batch's latents."""
        sf = float(frozen["scale_factor"])
        if sf == 0:
            sf = float(((saved_config or {}).get("ldm") or {}).get("scale_factor") or 0.0)
        if sf <= 0:
            sf = float(jax.jit(self.measure_scale_factor)(frozen["vae"], batch, key))
            if not math.isfinite(sf) or sf <= 0:
                raise UserError(f"cannot measure the latent scale factor (got {sf}); set "
                                "--config.ldm.scale_factor")
            log.info("measured latent scale factor %.4f (1/std of the first batch's latents)", sf)
        return {"scale_factor": np.float32(sf)}, {"ldm": {"scale_factor": sf}}

    def __init__(self, config: Any, vae_cfg: VAEConfig, unet_cfg: UNetConfig, dtype=jnp.float32):
        c = config.ldm
        self.vae_cfg, self.unet_cfg, self.dtype = vae_cfg, unet_cfg, dtype
        self.vae = AutoencoderKL(vae_cfg, dtype=dtype)
        self.unet = UNetModel(unet_cfg, dtype=dtype)
        self.parameterization, self.weighting = c.parameterization, c.weighting
        self.min_snr_gamma = float(c.get("min_snr_gamma", 5.0))
        self.cfg_drop_prob, self.cfg_drop_per = float(c.cfg_drop_prob), c.cfg_drop_per
        if self.cfg_drop_per not in ("batch", "example"):
            raise ValueError(f"ldm.cfg_drop_per must be 'batch' or 'example', got {self.cfg_drop_per!r}")
        kwargs = c.get("schedule_kwargs") or {}
        kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
        self.alphas_cumprod = np.asarray(make_alphas_cumprod(c.schedule, int(c.num_timesteps), **kwargs), np.float32)
        self.diffusion = DiffusionConfig.from_ldm_config(c)  # validates the objective and its settings
        self.objective = self.diffusion.objective
        if self.objective != "diffusion" and self.weighting != "uniform":
            raise ValueError(f"ldm.weighting={self.weighting!r} is a diffusion (SNR) weighting; the {self.objective} "
                             "objective takes 'uniform' (its time law is ldm.flow_time_sampling)")
        self.grad_accum = int(config.train.get("grad_accum", 1))
        self.ema_decay = float(c.ema_decay)
        self.mask_above_bandwidth = bool(c.get("mask_above_bandwidth", True))
        data = config.get("data") or {}
        self.stft_lowpass = str(data.get("lowpass", "host")) == "device_stft"

    def init(self, key: jax.Array, batch_shape: tuple[int, int]) -> dict:
        """Fresh UNet params for crops of ``batch_shape`` = (B, N samples)."""
        f = self.vae_cfg.downsample_factor
        frames = batch_shape[1] // audio.HOP
        x = jnp.zeros((1, frames // f, 256 // f, self.unet_cfg.in_channels), jnp.float32)
        return {"unet": self.unet.init(key, x, jnp.zeros((1,), jnp.int32))["params"]}

    def latents(self, vae_params, batch: dict, key: jax.Array, scale_factor) -> tuple[jax.Array, jax.Array]:
        """(z [B, T/8, 32, C] scaled target latent, cond [B, T/8, 32, C] unscaled condition latent)."""
        mels = pair_log_mels(batch, self.stft_lowpass)[..., None]
        mean, logvar = self.vae.apply({"params": vae_params}, mels, method=AutoencoderKL.encode)
        z = posterior_sample(mean, logvar, jax.random.normal(key, mean.shape))
        z = jax.lax.stop_gradient(z)
        b = batch["audio"].shape[0]
        return z[:b] * scale_factor, z[b:]

    def measure_scale_factor(self, vae_params, batch: dict, key: jax.Array) -> jax.Array:
        """AudioLDM's ``scale_by_std``: 1 / std of the target latents of one batch."""
        z, _ = self.latents(vae_params, batch, key, 1.0)
        return 1.0 / jnp.std(z)

    def loss(self, params, frozen, batch, key):
        """(loss, metrics) of one (micro-)batch."""
        k_enc, k_drop, k_t, k_eps = jax.random.split(key, 4)
        z, cond = self.latents(frozen["vae"], batch, k_enc, frozen["scale_factor"])
        b = z.shape[0]
        drop_shape = (1,) if self.cfg_drop_per == "batch" else (b,)
        drop = jax.random.uniform(k_drop, drop_shape) < self.cfg_drop_prob
        cond_real = cond * frozen["scale_factor"]
        cond = jnp.where(drop.reshape(-1, 1, 1, 1), UNCONDITIONAL_LATENT, cond) * frozen["scale_factor"]
        if self.objective != "diffusion":
            return self._flow_loss(params, batch, z, cond, cond_real, k_t, k_eps, drop)
        t = jax.random.randint(k_t, (b,), 0, self.alphas_cumprod.shape[0])
        eps = jax.random.normal(k_eps, z.shape)
        a = jnp.asarray(self.alphas_cumprod)[t]
        x_t = jnp.sqrt(a)[:, None, None, None] * z + jnp.sqrt(1.0 - a)[:, None, None, None] * eps
        pred = self.unet.apply({"params": params["unet"]}, jnp.concatenate([x_t, cond], axis=-1), t)
        if self.mask_above_bandwidth and "bandwidth_hz" in batch:
            mask = latent_band_mask(batch["bandwidth_hz"], z.shape[2])
            loss = masked_diffusion_loss(pred, z, eps, a, mask, self.parameterization, self.weighting,
                                         self.min_snr_gamma)
        else:
            loss = objectives.diffusion_loss(pred, z, eps, a, self.parameterization, self.weighting,
                                             self.min_snr_gamma)
        return loss, {"loss": loss, "latent_std": jnp.std(z), "cfg_dropped": jnp.mean(drop.astype(jnp.float32))}

    def _flow_loss(self, params, batch, z, cond, cond_real, k_t, k_eps, drop):
        """The flow/bridge objective: z, cond (as the UNet sees it), cond_real (undropped): [B, T/8, 32, C]."""
        d = self.diffusion
        t = flow.sample_time(k_t, z.shape[0], d.flow_time_sampling, d.flow_logit_mean, d.flow_logit_std,
                             d.flow_time_shift)
        eps = jax.random.normal(k_eps, z.shape)
        x1 = eps if self.objective == "flow" else flow.bridge_start(cond_real, eps, d.bridge_noise)
        x_t = flow.interpolate(z, x1, t)
        # t·T: the UNet's sinusoidal embedding keeps the frequency range of its (released) integer-step training
        pred = self.unet.apply({"params": params["unet"]}, jnp.concatenate([x_t, cond], axis=-1),
                               flow.network_time(t, d.num_timesteps))
        mask = None
        if self.mask_above_bandwidth and "bandwidth_hz" in batch:
            mask = latent_band_mask(batch["bandwidth_hz"], z.shape[2])
        loss = flow.flow_loss(pred, z, x1, mask)
        return loss, {"loss": loss, "latent_std": jnp.std(z), "cfg_dropped": jnp.mean(drop.astype(jnp.float32))}

    def train_step(self, state: st.TrainState, frozen: dict, batch: dict, txs: dict):
        """One optimizer step on the global batch (accumulated over ``train.grad_accum`` micro-batches)."""
        key = st.step_key(state)
        loss, metrics, grads = st.accumulate_grads(
            lambda p, b, k: self.loss(p, frozen, b, k), state.params, batch, key, self.grad_accum)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads["unet"])))
        new = st.apply_group(state, "unet", grads["unet"], txs["unet"])
        new = st.update_ema(new, self.ema_decay)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return st.finish_step(state, new, finite), {**metrics, "grad_norm": grad_norm, "finite": finite}

    def eval_step(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """Validation loss with the EMA params (if any) and the trained params."""
        out = {"loss": self.loss(state.params, frozen, batch, key)[0]}
        if state.ema:
            out["loss_ema"] = self.loss(state.ema, frozen, batch, key)[0]
        return out
