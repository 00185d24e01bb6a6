"""Losses of the VAE and vocoder training stages (pure jnp; weights are applied by the caller).

Vocoder (HiFi-GAN objective, docs/design.md §Vocoder training): LSGAN adversarial terms over every
sub-discriminator, feature matching (HiFi-GAN weight 2) and L1 on the 48 kHz log-mel (HiFi-GAN weight 45).
VAE (AudioLDM `LPIPSWithDiscriminator`, docs/design.md §VAE training): the L1 reconstruction NLL with a
learned scalar log-variance, the KL to N(0, I), and a PatchGAN hinge term weighted adaptively and switched
on after `disc_start`.

All reductions are in float32 whatever the compute dtype of the inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from audiosr_jax.audio import log_mel_spectrogram

__all__ = [
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "feature_matching_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "mel_l1_loss",
    "kl_diagonal_gaussian",
    "vae_reconstruction_nll",
    "adaptive_gan_weight",
    "global_norm",
    "disc_factor",
]


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


# ------------------------------------------------------------------------------------------------------------
# Adversarial terms
# ------------------------------------------------------------------------------------------------------------


def lsgan_discriminator_loss(real_logits: Sequence, fake_logits: Sequence) -> tuple[jax.Array, list[jax.Array]]:
    """HiFi-GAN `discriminator_loss`: Σ_k [mean((1 - D_k(x))²) + mean(D_k(G(z))²)].

    Args: real_logits, fake_logits: lists (one per sub-discriminator) of arrays of any shape [B, ...], the
      same shapes pairwise. The caller passes `stop_gradient`'ed fakes (or fakes from outside the G graph).
    Returns: (total scalar float32, per-discriminator list of scalars), each term a mean over its elements.
    """
    per = []
    for r, f in zip(real_logits, fake_logits, strict=True):
        per.append(jnp.mean(jnp.square(1.0 - _f32(r))) + jnp.mean(jnp.square(_f32(f))))
    return sum(per[1:], per[0]), per


def lsgan_generator_loss(fake_logits: Sequence) -> jax.Array:
    """HiFi-GAN `generator_loss`: Σ_k mean((1 - D_k(G(z)))²).

    Args: fake_logits: list of [B, ...] arrays. Returns: scalar float32.
    """
    terms = [jnp.mean(jnp.square(1.0 - _f32(f))) for f in fake_logits]
    return sum(terms[1:], terms[0])


def feature_matching_loss(real_feats: Sequence[Sequence], fake_feats: Sequence[Sequence]) -> jax.Array:
    """HiFi-GAN `feature_loss` without its built-in ×2 (the caller applies λ_fm = 2).

    Σ over sub-discriminators and layers of mean|stop_gradient(real) - fake|.
    Args: real_feats, fake_feats: lists (per sub-discriminator) of lists (per layer) of arrays of equal
      shapes. Returns: scalar float32. Gradients flow only into the fake features.
    """
    total = jnp.zeros((), jnp.float32)
    for rs, fs in zip(real_feats, fake_feats, strict=True):
        for r, f in zip(rs, fs, strict=True):
            total = total + jnp.mean(jnp.abs(jax.lax.stop_gradient(_f32(r)) - _f32(f)))
    return total


def hinge_discriminator_loss(real_logits, fake_logits) -> jax.Array:
    """taming `hinge_d_loss`: 0.5·(mean(relu(1 - real)) + mean(relu(1 + fake))).

    Args: real_logits, fake_logits: arrays [B, ...] (or lists of them: the terms are summed over the list).
    Returns: scalar float32.
    """
    terms = [
        0.5 * (jnp.mean(jax.nn.relu(1.0 - _f32(r))) + jnp.mean(jax.nn.relu(1.0 + _f32(f))))
        for r, f in zip(_as_list(real_logits), _as_list(fake_logits), strict=True)
    ]
    return sum(terms[1:], terms[0])


def hinge_generator_loss(fake_logits) -> jax.Array:
    """taming's generator GAN term: -mean(D(x̂)). Args: array [B, ...] (or list, summed). Returns: scalar."""
    terms = [-jnp.mean(_f32(f)) for f in _as_list(fake_logits)]
    return sum(terms[1:], terms[0])


# ------------------------------------------------------------------------------------------------------------
# Reconstruction and prior terms
# ------------------------------------------------------------------------------------------------------------


def mel_l1_loss(wave_hat, wave) -> jax.Array:
    """HiFi-GAN mel loss: mean |log_mel(ŵ) - log_mel(w)| on the 48 kHz, 256-bin log-mel of `audio.py`.

    The weight (HiFi-GAN: 45) is applied by the caller. The target's mel is `stop_gradient`'ed.
    Args: wave_hat, wave: [B, T] float waveforms at 48 kHz, T a multiple of 480 (hop) and > 784.
    Returns: scalar float32, the mean over B × T/480 × 256.
    """
    mel_hat, _ = log_mel_spectrogram(_f32(wave_hat))
    mel, _ = log_mel_spectrogram(_f32(wave))
    return jnp.mean(jnp.abs(mel_hat - jax.lax.stop_gradient(mel)))


def kl_diagonal_gaussian(mean, logvar) -> jax.Array:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) as taming's `DiagonalGaussianDistribution.kl()` + AudioLDM's loss.

    0.5·Σ(mean² + exp(logvar) - 1 - logvar) over all non-batch elements, then the mean over the batch.
    Args: mean, logvar: [B, ...] of equal shapes (the VAE encoder's outputs, logvar already clamped to
      [-30, 20] by `AutoencoderKL.encode`). Returns: scalar float32 (the caller applies kl_weight).
    """
    mean, logvar = _f32(mean), _f32(logvar)
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl) / mean.shape[0]


def vae_reconstruction_nll(
    mel_hat,
    mel,
    logvar_scalar,
    perceptual_loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    perceptual_weight: float = 1.0,
) -> jax.Array:
    """AudioLDM `LPIPSWithDiscriminator` NLL: Σ(|x - x̂| / exp(s) + s) / B, s the learned scalar log-variance.

    Args:
      mel_hat, mel: [B, ...] reconstructed and target log-mels (e.g. [B, T, 256, 1]); the target is
        `stop_gradient`'ed.
      logvar_scalar: the learned scalar `s` (a float32 param, initialised to 0 in AudioLDM; it gets a gradient).
      perceptual_loss: hook for taming's LPIPS term, `f(mel_hat, mel) -> [B]` per-example distances, added
        (× perceptual_weight) to every element's |x - x̂| as taming broadcasts its [B, 1, 1, 1] LPIPS. No
        implementation is provided: LPIPS needs pretrained VGG16 + linear-layer weights, which are not
        available offline, so the default (None) trains on L1 alone (AudioLDM uses perceptual_weight 1).
      perceptual_weight: weight of the hook's term.
    Returns: scalar float32, summed over every element and averaged over the batch (the loss AudioLDM
      optimises; its `rec_loss` log is `mean|x - x̂|`).
    """
    x_hat, x = _f32(mel_hat), jax.lax.stop_gradient(_f32(mel))
    rec = jnp.abs(x - x_hat)
    if perceptual_loss is not None:
        p = _f32(perceptual_loss(x_hat, x)).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        rec = rec + perceptual_weight * p
    s = _f32(logvar_scalar)
    nll = rec / jnp.exp(s) + s
    return jnp.sum(nll) / x.shape[0]


# ------------------------------------------------------------------------------------------------------------
# Weighting
# ------------------------------------------------------------------------------------------------------------


def global_norm(tree) -> jax.Array:
    """sqrt(Σ x²) over every leaf of a pytree, in float32."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum((jnp.sum(jnp.square(_f32(x))) for x in leaves), jnp.zeros((), jnp.float32)))


def adaptive_gan_weight(nll_grads, g_grads, disc_weight: float = 0.5, eps: float = 1e-4,
                        max_weight: float = 1e4) -> jax.Array:
    """taming `calculate_adaptive_weight`: clip(‖∇nll‖ / (‖∇g‖ + eps), 0, max_weight) · disc_weight.

    Args: nll_grads, g_grads: gradient pytrees of the NLL and of the generator GAN loss with respect to the
      same parameters (the decoder's last layer kernel, `conv_out`), computed by the caller; the norm is the
      global L2 norm over each pytree. Returns: scalar float32, `stop_gradient`'ed.
    """
    w = global_norm(nll_grads) / (global_norm(g_grads) + eps)
    w = jnp.clip(w, 0.0, max_weight)
    return jax.lax.stop_gradient(w) * disc_weight


def disc_factor(step, start, factor: float = 1.0) -> jax.Array:
    """taming `adopt_weight`: 0 while step < start, then `factor` (1 by default). Works on traced steps.

    Args: step: int scalar (Python or traced); start: the first step with the GAN term on (AudioLDM: 50001).
    Returns: scalar float32.
    """
    return jnp.where(jnp.asarray(step) < start, 0.0, factor).astype(jnp.float32)
