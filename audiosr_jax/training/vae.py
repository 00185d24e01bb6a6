"""Stage ``vae``: the mel VAE (AutoencoderKL) with AudioLDM's ``LPIPSWithDiscriminator`` objective
(docs/design.md §VAE training).

Per example (48 kHz waveform crops from the loader): normalise as the reference does (remove the mean,
peak 0.5, ``ldm.normalize_pair``), log-mel -> x [B, T, 256, 1]; encode, draw a posterior sample, decode
-> x̂. Losses (``training.losses``):

  nll   = Σ(|x − x̂| / exp(s) + s) / B     s: the learned scalar log-variance (group "loss", init 0)
  kl    = KL(q(z|x) ‖ N(0, I)) summed over the latent, mean over the batch
  g     = −mean(D(x̂))                       PatchGAN D (``PatchDiscriminator``), hinge loss
  AE    = nll + kl_weight · kl + d_weight · disc_factor · g
  D     = disc_factor · ½(mean relu(1 − D(x)) + mean relu(1 + D(sg(x̂))))

``d_weight = clip(‖∇_K nll‖ / (‖∇_K g‖ + 1e-4), 0, 1e4) · disc_weight`` with K the decoder's last conv kernel
(taming's adaptive weight); ``disc_factor`` is 0 before ``vae.disc_start`` steps, then ``vae.disc_factor``.
LPIPS is not used (no pretrained VGG offline; ``losses.vae_reconstruction_nll`` has the hook).

Update order (taming/AudioLDM manual optimisation): **sequential** — the discriminator step first (on the
reconstruction of the current AE params), then the AE step against the *updated* discriminator. Both phases
draw the same posterior sample (same key), so the D step sees exactly the x̂ the AE step trains on. The D
phase re-runs the AE forward (no gradient) rather than sharing it, so that each phase can accumulate over
micro-batches (``train.grad_accum``) independently; before ``disc_start`` the D phase is skipped with
``lax.cond`` (no cost, no optimizer update). With ``vae.adversarial = False`` the discriminator is never run
nor updated (its params stay in the state so workdirs of both settings have the same layout).

Dropout: the reference VAE config has ``dropout = 0.1`` in its ResnetBlocks, but the Flax AutoencoderKL has
no dropout (it is an inference port), so training runs without it.

Parameter groups: "vae" (exactly the AutoencoderKL params: the LDM stage reads it with
``read_trained_params(workdir, "vae")``), "loss" ({"logvar": scalar}, trained with the "vae" optimizer
settings: ``config.optim.loss`` is the same ConfigDict as ``config.optim.vae``), "discriminator".

Shapes: batch "audio" [B, N] float32 48 kHz, N a multiple of 480 · 2^(levels − 1) (3840 for the released
VAE) and long enough for the PatchGAN (≥ 32 mel frames with 3 layers).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from audiosr_jax import audio
from audiosr_jax.models.vae import AutoencoderKL, VAEConfig, posterior_sample
from audiosr_jax.training import losses
from audiosr_jax.training import state as st
from audiosr_jax.training.discriminators import PatchDiscriminator
from audiosr_jax.training.ldm import normalize_pair
from audiosr_jax.training.stages import Stage
from audiosr_jax.training.weights import architectures

_D_METRICS = ("d_loss", "logits_real", "logits_fake", "grad_norm_disc")


class VAEStage(Stage):
    """The VAE stage: ``init`` -> params {"vae", "loss", "discriminator"}; pure ``train_step``/``eval_step``."""

    name = "vae"
    groups = ("vae", "loss", "discriminator")
    ema_groups = ()
    families = {"vae": "vae"}

    @classmethod
    def from_config(cls, config: Any) -> tuple["VAEStage", dict]:
        """The stage for ``config``; it freezes nothing."""
        return cls(config, architectures(config.model)[0], jnp.dtype(config.train.compute_dtype)), {}

    def __init__(self, config: Any, vae_cfg: VAEConfig, dtype=jnp.float32):
        c = config.vae
        self.vae_cfg, self.dtype = vae_cfg, dtype
        self.vae = AutoencoderKL(vae_cfg, dtype=dtype)
        d = c.disc
        self.disc = PatchDiscriminator(ndf=int(d.ndf), n_layers=int(d.n_layers), norm_groups=int(d.norm_groups),
                                       dtype=dtype)
        self.adversarial = bool(c.adversarial)
        self.kl_weight = float(c.kl_weight)
        self.disc_start = int(c.disc_start)
        self.disc_weight = float(c.disc_weight)
        self.disc_factor = float(c.disc_factor)
        self.logvar_init = float(c.get("logvar_init", 0.0))
        self.grad_accum = int(config.train.get("grad_accum", 1))
        self._preview = jax.jit(self._preview_impl)

    # ------------------------------------------------------------------------------------------------ setup

    def init(self, key: jax.Array, batch_shape: tuple[int, int]) -> dict:
        """Fresh params for crops of ``batch_shape`` = (B, N samples)."""
        n = int(batch_shape[1])
        f = audio.HOP * self.vae_cfg.downsample_factor
        if n % f:
            raise ValueError(f"vae stage: crop of {n} samples is not a multiple of {f} "
                             f"(480 · VAE downsample factor {self.vae_cfg.downsample_factor})")
        mel = jnp.zeros((1, n // audio.HOP, audio.N_MELS, 1), jnp.float32)
        logits = jax.eval_shape(lambda m: self.disc.init_with_output(jax.random.PRNGKey(0), m)[0][0], mel)
        if 0 in logits.shape:
            raise ValueError(f"vae stage: a crop of {n} samples ({n // audio.HOP} mel frames) is too short for "
                             f"the {self.disc.n_layers}-layer PatchGAN; use at least {32 * audio.HOP} samples")
        k_vae, k_disc = jax.random.split(key)
        return {"vae": self.vae.init(k_vae, mel)["params"],
                "loss": {"logvar": jnp.full((), self.logvar_init, jnp.float32)},
                "discriminator": self.disc.init(k_disc, mel)["params"]}

    # ------------------------------------------------------------------------------------------------ model

    @staticmethod
    def target_mel(batch: dict) -> jax.Array:
        """Normalised waveform -> log-mel x float32 [B, T, 256, 1]."""
        wave, _ = normalize_pair(batch["audio"], None)
        return audio.log_mel_spectrogram(wave)[0][..., None]

    def reconstruct(self, vae_params, mel: jax.Array, key: jax.Array):
        """(x̂ [B, T, 256, 1], posterior mean, posterior logvar [B, T/f, 256/f, C]) for a posterior sample."""
        mean, logvar = self.vae.apply({"params": vae_params}, mel, method=AutoencoderKL.encode)
        z = posterior_sample(mean, logvar, jax.random.normal(key, mean.shape))
        return self.vae.apply({"params": vae_params}, z, method=AutoencoderKL.decode), mean, logvar

    def _logits(self, disc_params, mel):
        return self.disc.apply({"params": disc_params}, mel)[0]

    # ------------------------------------------------------------------------------------------------ losses

    def d_loss(self, disc_params, vae_params, batch: dict, key: jax.Array):
        """Hinge loss of the discriminator on x vs sg(x̂) (one micro-batch): (loss, metrics)."""
        mel = self.target_mel(batch)
        fake = jax.lax.stop_gradient(self.reconstruct(vae_params, mel, key)[0])
        real_logits = self._logits(disc_params, mel)
        fake_logits = self._logits(disc_params, fake)
        loss = losses.hinge_discriminator_loss(real_logits, fake_logits)
        return loss, {"d_loss": loss, "logits_real": jnp.mean(real_logits), "logits_fake": jnp.mean(fake_logits)}

    def ae_loss(self, params: dict, disc_params, factor: jax.Array, batch: dict, key: jax.Array):
        """AE loss of one micro-batch: params {"vae", "loss"}; the discriminator is fixed. (loss, metrics)."""
        mel = self.target_mel(batch)
        s = params["loss"]["logvar"]
        if self.adversarial:
            (mel_hat, mean, logvar), pullback = jax.vjp(lambda v: self.reconstruct(v, mel, key), params["vae"])
        else:
            mel_hat, mean, logvar = self.reconstruct(params["vae"], mel, key)
        nll = losses.vae_reconstruction_nll(mel_hat, mel, s)
        kl = losses.kl_diagonal_gaussian(mean, logvar)
        loss = nll + self.kl_weight * kl
        metrics = {"nll": nll, "kl": kl, "rec_loss": jnp.mean(jnp.abs(mel_hat - mel)), "logvar": s}
        if self.adversarial:
            g_loss = losses.hinge_generator_loss(self._logits(disc_params, mel_hat))
            # taming's adaptive weight: the two losses' gradients w.r.t. the decoder's last conv kernel. The
            # cotangents on x̂ are cheap; the pullback to one kernel is a single transposed conv, and XLA drops
            # the rest of that backward pass (only the kernel is used).
            x_sg, s_sg = jax.lax.stop_gradient(mel_hat), jax.lax.stop_gradient(s)
            ct_nll = jax.grad(lambda m: losses.vae_reconstruction_nll(m, mel, s_sg))(x_sg)
            ct_g = jax.grad(lambda m: losses.hinge_generator_loss(self._logits(disc_params, m)))(x_sg)
            zeros = (jnp.zeros_like(mean), jnp.zeros_like(logvar))

            def last_layer(ct):
                return pullback((ct, *zeros))[0]["decoder"]["conv_out"]["kernel"]

            d_weight = losses.adaptive_gan_weight(last_layer(ct_nll), last_layer(ct_g), self.disc_weight)
            loss = loss + d_weight * factor * g_loss
            metrics.update(g_loss=g_loss, d_weight=d_weight)
        metrics["loss"] = loss
        return loss, metrics

    # ------------------------------------------------------------------------------------------------ steps

    def _d_phase(self, state: st.TrainState, batch: dict, key: jax.Array, tx) -> tuple[dict, Any, dict]:
        loss, metrics, grads = st.accumulate_grads(
            lambda dp, b, k: self.d_loss(dp, state.params["vae"], b, k), state.params["discriminator"], batch,
            key, self.grad_accum)
        new = st.apply_group(state, "discriminator", grads, tx)
        metrics = {**metrics, "grad_norm_disc": losses.global_norm(grads)}
        return new.params["discriminator"], new.opt_state["discriminator"], {k: metrics[k] for k in _D_METRICS}

    def train_step(self, state: st.TrainState, frozen: dict, batch: dict, txs: dict):
        """One step: discriminator update (if adversarial and past disc_start), then the AE update."""
        key = st.step_key(state)
        new = state
        metrics: dict = {}
        if self.adversarial:
            factor = losses.disc_factor(state.step, self.disc_start, self.disc_factor)

            def skip(s):
                return (s.params["discriminator"], s.opt_state["discriminator"],
                        {k: jnp.zeros((), jnp.float32) for k in _D_METRICS})

            d_params, d_opt, d_metrics = jax.lax.cond(
                factor > 0, lambda s: self._d_phase(s, batch, key, txs["discriminator"]), skip, state)
            new = new.replace(params={**new.params, "discriminator": d_params},
                              opt_state={**new.opt_state, "discriminator": d_opt})
            metrics.update(d_metrics, disc_factor=factor)
        else:
            factor = jnp.zeros((), jnp.float32)

        ae_params = {"vae": new.params["vae"], "loss": new.params["loss"]}
        disc_params = new.params["discriminator"]
        loss, ae_metrics, grads = st.accumulate_grads(
            lambda p, b, k: self.ae_loss(p, disc_params, factor, b, k), ae_params, batch, key, self.grad_accum)
        grad_norm = losses.global_norm(grads)
        new = st.apply_group(new, "vae", grads["vae"], txs["vae"])
        new = st.apply_group(new, "loss", grads["loss"], txs["loss"])
        metrics.update(ae_metrics, grad_norm=grad_norm)

        checked = [loss, grad_norm] + ([metrics["d_loss"], metrics["grad_norm_disc"]] if self.adversarial else [])
        finite = jnp.all(jnp.isfinite(jnp.stack(checked)))
        return st.finish_step(state, new, finite), {**metrics, "finite": finite}

    def eval_step(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """Validation: nll + kl_weight·kl (no GAN term), the mean |x − x̂| and the KL, for a posterior sample."""
        mel = self.target_mel(batch)
        mel_hat, mean, logvar = self.reconstruct(state.params["vae"], mel, key)
        nll = losses.vae_reconstruction_nll(mel_hat, mel, state.params["loss"]["logvar"])
        kl = losses.kl_diagonal_gaussian(mean, logvar)
        return {"loss": nll + self.kl_weight * kl, "rec_loss": jnp.mean(jnp.abs(mel_hat - mel)), "kl": kl}

    def _preview_impl(self, vae_params, batch, key):
        mel = self.target_mel(jax.tree.map(lambda x: x[:1], batch))
        mel_hat = self.reconstruct(vae_params, mel, key)[0]
        return {"mel/target": mel[0, ..., 0], "mel/reconstruction": mel_hat[0, ..., 0]}

    def preview(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """The first validation clip's log-mel and its reconstruction ([T, 256] each)."""
        return self._preview(state.params["vae"], {"audio": batch["audio"]}, key)
