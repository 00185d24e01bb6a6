"""Stage ``vocoder``: the 48 kHz HiFi-GAN generator with the HiFi-GAN objective plus UnivNet's MRD
(docs/design.md §Vocoder training).

Per example: a waveform crop w [B, N] (N = ``data.crop_samples``, a multiple of 480; 15,360 = 0.32 s as
AudioSR's vocoder config), optionally normalised like the other stages (``vocoder_train.normalize``); its
log-mel m = ``audio.log_mel_spectrogram(w)`` [B, N/480, 256]; ŵ = HiFiGAN(m).

Alignment: the generator returns ``480·T + 16`` samples for T frames (the 10/5 transposed conv of level 1
keeps one extra sample at its end, ×16 by the later levels; ``VocoderConfig.output_length``). Frame t of
the centred STFT is centred on sample 480·t of w, and the inference pipeline keeps the *first* N samples of
the vocoder output, so training compares ŵ[:, :N] with w (the 16-sample tail is dropped). The generator
learns whatever sub-frame delay this implies; training and inference use the same convention.

Losses (HiFi-GAN, LSGAN): D = Σ_k mean((1 − D_k(w))²) + mean(D_k(sg(ŵ))²) over every sub-discriminator of
``VocoderDiscriminator`` (``vocoder_train.disc.kinds``, default MPD + MSD + MRD);
G = Σ_k mean((1 − D_k(ŵ))²) + λ_fm · feature matching + λ_mel · mean|log_mel(ŵ) − m| (λ_fm 2, λ_mel 45).

Update order (HiFi-GAN): **sequential** — the discriminator step first (on sg(ŵ) of the current
generator), then the generator step against the updated discriminator. The D phase runs its own generator
forward (no gradient), so each phase can accumulate over micro-batches (``train.grad_accum``) on its own.

Groups: "generator" (exactly the HiFiGAN params, as converted from AudioSR) and "discriminator".
Sharding: any mesh, the MSD's grouped convs included: the loop traces the step under
``sharding.grouped_convs_batch_sharded``, which sidesteps XLA's wrong grouped-conv kernel gradient on a batch
sharded over only some mesh axes (tensor > 1). Checked: one step on data 4 × tensor 2 equals data 8
(tests/test_train_stages.py), and two steps on data 4 × tensor 2 over 2 processes equal 1 process
(tests/test_multiprocess_train.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from audiosr_jax import audio
from audiosr_jax.models.vocoder import HiFiGAN, VocoderConfig
from audiosr_jax.training import losses
from audiosr_jax.training import state as st
from audiosr_jax.training.discriminators import MRD_RESOLUTIONS, VocoderDiscriminator
from audiosr_jax.training.ldm import normalize_pair
from audiosr_jax.training.stages import Stage
from audiosr_jax.training.weights import architectures


class VocoderStage(Stage):
    """The vocoder stage: ``init`` -> params {"generator", "discriminator"}; pure ``train_step``/``eval_step``."""

    name = "vocoder"
    groups = ("generator", "discriminator")
    ema_groups = ()
    families = {"vocoder": "generator"}

    @classmethod
    def from_config(cls, config: Any) -> tuple["VocoderStage", dict]:
        """The stage for ``config``; it freezes nothing."""
        return cls(config, architectures(config.model)[2], jnp.dtype(config.train.compute_dtype)), {}

    def __init__(self, config: Any, voc_cfg: VocoderConfig, dtype=jnp.float32):
        c = config.vocoder_train
        d = c.disc
        kinds = tuple(str(k) for k in d.kinds)
        if voc_cfg.hop_length != audio.HOP or voc_cfg.num_mels != audio.N_MELS:
            raise ValueError(f"vocoder stage: the generator must upsample by {audio.HOP} from {audio.N_MELS} mels "
                             f"(got hop {voc_cfg.hop_length}, {voc_cfg.num_mels} mels)")
        self.voc_cfg, self.dtype = voc_cfg, dtype
        self.generator = HiFiGAN(voc_cfg, dtype=dtype)
        resolutions = tuple(tuple(int(x) for x in r) for r in d.get("resolutions", MRD_RESOLUTIONS))
        self.disc = VocoderDiscriminator(kinds=kinds, width_multiplier=float(d.width_multiplier),
                                         periods=tuple(int(p) for p in d.periods), scales=int(d.scales),
                                         resolutions=resolutions, dtype=dtype)
        self.lambda_fm, self.lambda_mel = float(c.lambda_fm), float(c.lambda_mel)
        self.normalize = bool(c.get("normalize", False))
        self.grad_accum = int(config.train.get("grad_accum", 1))
        self._preview = jax.jit(self._preview_impl)

    def init(self, key: jax.Array, batch_shape: tuple[int, int]) -> dict:
        """Fresh generator and discriminator params for crops of ``batch_shape`` = (B, N samples)."""
        n = int(batch_shape[1])
        if n % audio.HOP:
            raise ValueError(f"vocoder stage: crop of {n} samples is not a multiple of the hop {audio.HOP}")
        k_g, k_d = jax.random.split(key)
        mel = jnp.zeros((1, n // audio.HOP, audio.N_MELS), jnp.float32)
        return {"generator": self.generator.init(k_g, mel)["params"],
                "discriminator": self.disc.init(k_d, jnp.zeros((1, n), jnp.float32))["params"]}

    # ------------------------------------------------------------------------------------------------ model

    def wave_and_mel(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(w [B, N] float32, log-mel [B, N/480, 256])."""
        wave = jnp.asarray(batch["audio"], jnp.float32)
        if self.normalize:
            wave, _ = normalize_pair(wave, None)
        return wave, audio.log_mel_spectrogram(wave)[0]

    def generate(self, gen_params, mel: jax.Array, n: int) -> jax.Array:
        """ŵ [B, n]: the first n of the generator's 480·T + 16 samples (see the module doc)."""
        return self.generator.apply({"params": gen_params}, mel)[:, :n]

    # ------------------------------------------------------------------------------------------------ losses

    def d_loss(self, disc_params, gen_params, batch: dict, key: jax.Array):
        """LSGAN discriminator loss on w vs sg(ŵ) (one micro-batch): (loss, metrics)."""
        wave, mel = self.wave_and_mel(batch)
        fake = jax.lax.stop_gradient(self.generate(gen_params, mel, wave.shape[-1]))
        real_logits, _ = self.disc.apply({"params": disc_params}, wave)
        fake_logits, _ = self.disc.apply({"params": disc_params}, fake)
        loss, _ = losses.lsgan_discriminator_loss(real_logits, fake_logits)
        return loss, {"d_loss": loss}

    def g_loss(self, gen_params, disc_params, batch: dict, key: jax.Array):
        """Generator loss (adv + λ_fm·fm + λ_mel·mel L1) of one micro-batch with D fixed: (loss, metrics)."""
        wave, mel = self.wave_and_mel(batch)
        fake = self.generate(gen_params, mel, wave.shape[-1])
        _, real_feats = self.disc.apply({"params": disc_params}, wave)
        fake_logits, fake_feats = self.disc.apply({"params": disc_params}, fake)
        adv = losses.lsgan_generator_loss(fake_logits)
        fm = losses.feature_matching_loss(real_feats, fake_feats)
        mel_l1 = jnp.mean(jnp.abs(audio.log_mel_spectrogram(fake)[0] - jax.lax.stop_gradient(mel)))
        loss = adv + self.lambda_fm * fm + self.lambda_mel * mel_l1
        return loss, {"loss": loss, "g_adv": adv, "feature_matching": fm, "mel_l1": mel_l1}

    # ------------------------------------------------------------------------------------------------ steps

    def train_step(self, state: st.TrainState, frozen: dict, batch: dict, txs: dict):
        """One step: discriminator update, then generator update against the updated discriminator."""
        key = st.step_key(state)
        d_loss, d_metrics, d_grads = st.accumulate_grads(
            lambda dp, b, k: self.d_loss(dp, state.params["generator"], b, k), state.params["discriminator"],
            batch, key, self.grad_accum)
        d_norm = losses.global_norm(d_grads)
        new = st.apply_group(state, "discriminator", d_grads, txs["discriminator"])

        disc_params = new.params["discriminator"]
        loss, g_metrics, g_grads = st.accumulate_grads(
            lambda gp, b, k: self.g_loss(gp, disc_params, b, k), new.params["generator"], batch, key,
            self.grad_accum)
        grad_norm = losses.global_norm(g_grads)
        new = st.apply_group(new, "generator", g_grads, txs["generator"])

        finite = jnp.all(jnp.isfinite(jnp.stack([loss, grad_norm, d_loss, d_norm])))
        metrics = {**g_metrics, **d_metrics, "grad_norm": grad_norm, "grad_norm_disc": d_norm, "finite": finite}
        return st.finish_step(state, new, finite), metrics

    def eval_step(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """Validation: the mel L1 of the generated audio (also as "loss")."""
        wave, mel = self.wave_and_mel(batch)
        fake = self.generate(state.params["generator"], mel, wave.shape[-1])
        mel_l1 = jnp.mean(jnp.abs(audio.log_mel_spectrogram(fake)[0] - mel))
        return {"loss": mel_l1, "mel_l1": mel_l1}

    def _preview_impl(self, gen_params, wave):
        wave, mel = self.wave_and_mel({"audio": wave[:1]})
        fake = self.generate(gen_params, mel, wave.shape[-1])
        return {"audio/generated": fake[0], "audio/target": wave[0],
                "mel/generated": audio.log_mel_spectrogram(fake)[0][0], "mel/target": mel[0]}

    def preview(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """The first validation clip: generated and target audio ([N]) and their log-mels ([N/480, 256])."""
        return self._preview(state.params["generator"], batch["audio"])
