"""Numerical parity with the official PyTorch AudioSR 0.0.7 at reduced width (fixtures in tests/fixtures).

The fixtures were produced by tools/reference/make_fixtures.py inside the reference's own venv, with weights
from `audiosr_jax.lab.synthetic` (regenerated here from the committed key/shape list and checked by fingerprint)
and converted by our converter. The conditioning VAE's encoder has weights of its own (seed 1), so the
fixtures tell it apart from the first-stage encoder. Tolerances: the issue's targets are log-mel 1e-4 abs
(where the mel is ≥ 30 dB above its floor; see audiosr_jax.lab.parity.LOUD_LOG_MEL), modules 1e-4 relative in
fp32 and a 2-step DDIM run with the reference's noise ≥ 60 dB SNR on the final waveform. Every relative
error is *guarded* far tighter, at about 3x the value measured when the fixtures were made (2e-6..4e-6, see
tests/fixtures/README.md), and never above 1e-5, so that a 1e-5 relative error in any one compared output
fails; integer bins must match exactly.
"""

import json
import os

import jax
import numpy as np
import pytest

from audiosr_jax.lab import parity
from audiosr_jax.convert.core import COND_VAE, VAE
from audiosr_jax.lab.testing import WIDTHS, torch_shapes

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

ISSUE_REL_TOL = 1e-4  # the issue's target for every relative error below

# metric: (measured, guard). max|ours - ref| / max|ref| in fp32, measured on an x86-64 CPU (AVX-512; JAX 0.10.2,
# XLA CPU) with the fixtures of tests/fixtures/README.md; guard ≈ 3 x measured, ≤ 1e-5. Regenerating the fixtures
# moved these by up to ~25 % (the reference's own fp32 rounding differs between machines by ~2e-6 relative).
MODULE_GUARDS = {
    "vae_mean_rel": (1.80e-6, 6e-6),
    "vae_logvar_rel": (1.68e-6, 6e-6),
    "vae_decode_rel": (3.49e-6, 1e-5),
    "unet_cond_rel": (1.94e-6, 6e-6),
    "unet_uncond_rel": (2.40e-6, 8e-6),
    "vocoder_rel": (1.70e-6, 6e-6),
    "ddim_latent_rel": (2.70e-6, 8e-6),
    "ddim_mel_rel": (3.92e-6, 1e-5),
}
# The 2-step DDIM run, stage by stage (the pipeline's own calls, on the reference's noise).
DDIM_GUARDS = {
    "ddim_cond_rel": (8.0e-7, 3e-6),  # the sampled condition latent (conditioning encoder + posterior sample)
    "unet_call_0_rel": (1.70e-6, 6e-6),  # t=501 cond
    "unet_call_1_rel": (2.40e-6, 8e-6),  # t=501 uncond
    "unet_call_2_rel": (3.91e-6, 1e-5),  # t=1 cond
    "unet_call_3_rel": (3.21e-6, 1e-5),  # t=1 uncond
    "ddim_mel_replaced_rel": (9.0e-7, 3e-6),
    "final_waveform_rel": (1.54e-6, 5e-6),
}
# SNR (dB) of the waveforms: measured 127.1 / 123.4; guards 10 dB lower (≈ 3x the error amplitude).
SNR_GUARDS = {"ddim_vocoder_snr_db": (127.1, 117.0), "final_waveform_snr_db": (123.4, 113.0)}


@pytest.fixture(scope="module")
def weights():
    return parity.reference_weights(FIXTURES)


@pytest.fixture(scope="module")
def metrics(weights):
    return parity.compare(FIXTURES, weights)


def test_converter_infers_the_reduced_architecture(weights):
    assert (weights.vae, weights.unet, weights.vocoder) == tuple(f() for f in WIDTHS["reduced"])
    assert weights.scale_factor == pytest.approx(0.55)


def test_fixture_weights_have_a_distinct_conditioning_encoder(weights):
    """The key list: the inference subset (seed 0) plus the conditioning VAE's encoder and quant_conv (seed 1);
    the converter keeps the latter as a separate "cond_vae" tree, every tensor of which differs."""
    meta = json.load(open(os.path.join(FIXTURES, "reduced_param_shapes.json")))
    assert meta["seed"] == 0 and meta["prefix_seeds"] == {COND_VAE: 1}
    first = {k: tuple(v) for k, v in meta["shapes"].items() if not k.startswith(COND_VAE)}
    cond = {k: tuple(v) for k, v in meta["shapes"].items() if k.startswith(COND_VAE)}
    assert first == torch_shapes(*(f() for f in WIDTHS["reduced"]))
    assert cond == {COND_VAE + k[len(VAE):]: s for k, s in first.items()
                    if k.startswith((VAE + "encoder.", VAE + "quant_conv."))}
    assert set(weights.params) == {"vae", "unet", "vocoder", "cond_vae"}
    first_enc = {"encoder": weights.params["vae"]["encoder"], "quant_conv": weights.params["vae"]["quant_conv"]}
    assert jax.tree.structure(first_enc) == jax.tree.structure(weights.params["cond_vae"])
    for a, b in zip(jax.tree.leaves(first_enc), jax.tree.leaves(weights.params["cond_vae"])):
        assert a.shape == b.shape and not np.array_equal(a, b)


def test_front_end(metrics):
    assert metrics["waveform_max_abs"] <= 1e-7
    for mel in ("log_mel", "lowpass_mel"):
        assert metrics[f"{mel}_max_abs_loud"] <= 1e-4, metrics
        # Near the floor: no farther from the float64 truth than the reference itself is.
        assert metrics[f"{mel}_ours_vs_float64"] <= 1.5 * metrics[f"{mel}_ref_vs_float64"] + 1e-4, metrics
    assert metrics["cutoff_hz_ours"] == pytest.approx(metrics["cutoff_hz_ref"])
    assert metrics["lowpass_waveform_max_abs"] <= 1e-6
    assert metrics["mel_cutoff_bin_equal"] == 1.0


@pytest.mark.parametrize("stage", list(MODULE_GUARDS))
def test_modules_within_1e_4_relative(metrics, stage):
    """Issue target: ≤ 1e-4 relative. Guarded at ≈ 3x the measured error (MODULE_GUARDS)."""
    measured, guard = MODULE_GUARDS[stage]
    assert guard <= ISSUE_REL_TOL
    assert metrics[stage] <= guard, f"{stage} = {metrics[stage]:.3g} > {guard:.3g} (measured {measured:.3g})"


@pytest.mark.parametrize("stage", list(DDIM_GUARDS))
def test_two_step_ddim_stage_by_stage(metrics, stage):
    measured, guard = DDIM_GUARDS[stage]
    assert guard <= ISSUE_REL_TOL
    assert metrics[stage] <= guard, f"{stage} = {metrics[stage]:.3g} > {guard:.3g} (measured {measured:.3g})"


def test_two_step_ddim_calls_and_bins_exact(metrics):
    # t=501 and t=1, each conditional and unconditional
    assert metrics["unet_calls_ours"] == 4, f"{metrics['unet_calls_ours']:g} distinct UNet calls recorded"
    # mel_replace_ops copies lowpass_mel below mel bin 128: bit-identical there
    assert metrics["ddim_mel_replaced_low_max_abs"] == 0.0, metrics["ddim_mel_replaced_low_max_abs"]
    # postprocessing's STFT cutoff row (141 of 1025)
    bins = (metrics["stft_cutoff_bin_ours"], metrics["stft_cutoff_bin_ref"])
    assert bins == (141, 141), f"STFT cutoff bin ours/ref = {bins[0]:g}/{bins[1]:g}, expected 141/141"


def test_two_step_ddim_end_to_end(metrics):
    for name, (measured, guard) in SNR_GUARDS.items():
        assert guard >= 60  # the issue's target
        assert metrics[name] >= guard, f"{name} = {metrics[name]:.1f} dB < {guard} dB (measured {measured} dB)"


def test_fixtures_tell_the_two_encoders_apart(weights, metrics):
    """With the first-stage and conditioning encoders exchanged, the DDIM run (conditioned by the wrong
    encoder) and the first-stage VAE comparison both fall far outside the issue's tolerances."""
    swapped = parity.compare(FIXTURES, parity.swap_encoders(weights))
    assert swapped["ddim_cond_rel"] > 100 * ISSUE_REL_TOL, swapped["ddim_cond_rel"]
    assert swapped["unet_call_0_rel"] > 100 * ISSUE_REL_TOL, swapped["unet_call_0_rel"]
    assert swapped["ddim_latent_rel"] > 100 * ISSUE_REL_TOL, swapped["ddim_latent_rel"]
    assert swapped["final_waveform_snr_db"] < 60, swapped["final_waveform_snr_db"]
    assert swapped["vae_mean_rel"] > 100 * ISSUE_REL_TOL, swapped["vae_mean_rel"]
    # the parts the encoders do not feed are unchanged
    assert swapped["unet_call_1_rel"] == metrics["unet_call_1_rel"]  # t=501 uncond: x_T and the constant
    assert swapped["vae_decode_rel"] == metrics["vae_decode_rel"]
