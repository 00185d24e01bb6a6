"""The diffusion maths: the reference's schedule, DDIM grid and update, and guidance."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.diffusion import parameterization as P
from audiosr_jax.diffusion.samplers import (
    DDIMTables,
    classifier_free_guidance,
    ddim_sample,
    ddim_tables,
    ddim_timesteps,
)
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod, make_alphas_cumprod


def test_cosine_schedule_matches_reference_values():
    ac = cosine_alphas_cumprod()
    # Values measured on the reference (docs/design.md §Noise schedule).
    assert ac[0] == pytest.approx(0.9999587, abs=1e-7)
    assert ac[1] == pytest.approx(0.9999126, abs=1e-7)
    assert ac[501] == pytest.approx(0.490727, abs=1e-6)
    assert ac[981] == pytest.approx(7.867e-4, rel=1e-3)
    assert ac[996] == pytest.approx(2.186e-5, rel=1e-3)
    assert ac[999] == 0.0  # zero terminal SNR: the reference leaves beta unclipped
    assert np.all(np.diff(ac) < 0) and np.all((ac >= 0) & (ac <= 1))
    assert cosine_alphas_cumprod(clip_beta=0.999)[-1] > 0


def test_make_alphas_cumprod_rejects_unknown():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_alphas_cumprod("nope")


@pytest.mark.parametrize("steps,expected", [(50, np.arange(0, 1000, 20) + 1), (2, [1, 501]), (200, np.arange(0, 1000, 5) + 1)])
def test_ddim_timesteps_reference_grid(steps, expected):
    np.testing.assert_array_equal(ddim_timesteps(steps), expected)


def test_ddim_timesteps_drop_out_of_range_step():
    # range(0, 1000, 333) + 1 = [1, 334, 667, 1000]: the reference would index ᾱ[1000] and crash.
    np.testing.assert_array_equal(ddim_timesteps(3), [1, 334, 667])
    with pytest.raises(ValueError):
        ddim_timesteps(0)


def test_ddim_tables_last_alpha_prev_is_alpha0():
    ac = cosine_alphas_cumprod()
    tab = ddim_tables(ac, 2, eta=1.0)
    np.testing.assert_array_equal(tab.timesteps, [501, 1])
    assert tab.alpha_prev[-1] == pytest.approx(ac[0], abs=1e-7)  # not 1.0
    assert tab.alpha_prev[0] == pytest.approx(ac[1], abs=1e-7)
    a, ap = ac[501], ac[1]
    assert tab.sigma[0] == pytest.approx(np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)), rel=1e-3)  # from float32 ᾱ, as the reference
    assert tab.sigma[-1] > 0  # noise is added at the last step too
    assert np.all(ddim_tables(ac, 2, eta=0.0).sigma == 0)


def test_v_parameterisation_round_trip():
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 4, 3))
    for abar in (0.0, 0.3, 0.999):
        sa, s1 = np.sqrt(abar), np.sqrt(1 - abar)
        xt = sa * x0 + s1 * eps
        v = P.v_target(x0, eps, sa, s1)
        np.testing.assert_allclose(P.v_to_x0(xt, v, sa, s1), x0, atol=1e-12)
        np.testing.assert_allclose(P.v_to_eps(xt, v, sa, s1), eps, atol=1e-12)


def test_ddim_matches_a_plain_numpy_loop():
    ac = cosine_alphas_cumprod()
    tab = ddim_tables(ac, 4, eta=1.0)
    rng = np.random.default_rng(1)
    x_T = rng.standard_normal((2, 3, 5)).astype(np.float32)
    noise = rng.standard_normal((4, 2, 3, 5)).astype(np.float32)
    W = rng.standard_normal((5, 5)).astype(np.float32) * 0.3

    def denoise(x, t):
        return jnp.tanh(x @ W) * (t[:, None, None] / 1000.0)

    out = jax.jit(lambda x, n: ddim_sample(denoise, x, n, tab))(x_T, noise)
    x = x_T.astype(np.float64)
    for i, t in enumerate(tab.timesteps):
        v = np.tanh(x @ W) * (t / 1000.0)
        sa, s1 = np.sqrt(ac[t]), np.sqrt(1 - ac[t])
        e, x0 = sa * v + s1 * x, sa * x - s1 * v
        ap, sg = tab.alpha_prev[i], tab.sigma[i]
        x = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sg ** 2) * e + sg * noise[i]
    np.testing.assert_allclose(out, x, rtol=1e-4, atol=1e-5)


def test_ddim_with_oracle_denoiser_recovers_data():
    # If the model knows x0, v = (√ᾱ x_t − x0)/√(1−ᾱ); deterministic DDIM lands on x0·√ᾱ_0-ish.
    ac = cosine_alphas_cumprod()
    tab = ddim_tables(ac, 50, eta=0.0)
    x_data = jnp.asarray(np.random.default_rng(2).standard_normal((1, 8)), jnp.float32)
    sa_tab, s1_tab = jnp.sqrt(jnp.asarray(ac, jnp.float32)), jnp.sqrt(1 - jnp.asarray(ac, jnp.float32))

    def oracle(x, t):
        sa, s1 = sa_tab[t][:, None], s1_tab[t][:, None]
        eps = (x - sa * x_data) / s1
        return sa * eps - s1 * x_data

    x_T = jnp.asarray(np.random.default_rng(3).standard_normal((1, 8)), jnp.float32)
    out = ddim_sample(oracle, x_T, jnp.zeros((len(tab.timesteps), 1, 8)), tab)
    np.testing.assert_allclose(out, np.sqrt(ac[0]) * x_data + np.sqrt(1 - ac[0]) * 0, atol=2e-2)


def test_classifier_free_guidance_batches_both_branches():
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return x * 0 + c

    x = jnp.zeros((3, 2))
    t = jnp.zeros((3,), jnp.int32)
    cond, uncond = jnp.full((3, 2), 2.0), jnp.full((3, 2), -1.0)
    out = classifier_free_guidance(model, cond, uncond, 3.5)(x, t)
    np.testing.assert_allclose(out, -1.0 + 3.5 * 3.0)
    assert calls == [6]  # one call on the doubled batch
    calls.clear()
    np.testing.assert_allclose(classifier_free_guidance(model, cond, uncond, 1.0)(x, t), 2.0)
    assert calls == [3]


def test_ddim_tables_match_the_reference_fixture():
    # The reference's own DDIM arrays (tests/fixtures/ddim.npz, recorded from audiosr 0.0.7's DDIMSampler for
    # 2 steps, eta 1): timesteps, ᾱ_t, ᾱ_prev (ᾱ_0 for the last step) and σ_t, ascending as the reference.
    ref = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "ddim.npz"))
    steps, eta = int(ref["ddim_steps"]), float(ref["ddim_eta"])
    tab = ddim_tables(make_alphas_cumprod("cosine", 1000), steps, eta)
    np.testing.assert_array_equal(tab.timesteps[::-1], ref["ddim_timesteps"])
    ac32 = cosine_alphas_cumprod().astype(np.float32)
    np.testing.assert_array_equal(ac32[tab.timesteps[::-1]], ref["ddim_alphas"].astype(np.float32))
    np.testing.assert_array_equal(tab.alpha_prev[::-1], ref["ddim_alphas_prev"].astype(np.float32))
    np.testing.assert_allclose(tab.sigma[::-1], ref["ddim_sigmas"], rtol=1e-6)


@pytest.mark.parametrize("steps,first,count", [(50, 981, 50), (200, 996, 200), (10, 901, 10), (3, 667, 3)])
def test_ddim_grid_ends_and_alpha_levels(steps, first, count):
    ac = make_alphas_cumprod()
    tab = ddim_tables(ac, steps, eta=1.0)
    assert len(tab.timesteps) == count and tab.timesteps[0] == first and tab.timesteps[-1] == 1
    assert tab.sqrt_alpha[0] == np.float32(np.sqrt(ac[first]))  # from the float64 table, as the reference
    assert tab.sqrt_one_minus_alpha[-1] == np.float32(np.sqrt(1 - ac[1]))
    assert tab.alpha_prev[-1] == np.float32(ac[0]) and tab.alpha_prev[0] == np.float32(ac[tab.timesteps[1]])
    assert 999 not in tab.timesteps  # the reference never evaluates ᾱ_999 = 0


def test_ddim_grid_for_other_num_timesteps():
    # The same rule, t = k·⌊T/S⌋ + 1, for a model trained with T ≠ 1000.
    np.testing.assert_array_equal(ddim_timesteps(10, 200), np.arange(0, 200, 20) + 1)
    np.testing.assert_array_equal(ddim_timesteps(7, 100), np.arange(0, 100, 14)[:8] + 1)
    tab = ddim_tables(make_alphas_cumprod("linear", 200), 10, eta=0.0)
    assert tab.timesteps[0] == 181 and np.all(tab.sigma == 0)


# ----------------------------------------------------------------------------------------------------------
# η up to 1 at every step count the CLI accepts: σ² never exceeds 1 − ᾱ_prev


def _unclamped_sigma(ac, steps, eta):
    """σ as the reference's formula gives it, sampling order, float32 (no bound applied)."""
    ts = ddim_timesteps(steps, len(ac))
    ac32 = np.asarray(ac, np.float32)
    a = ac32[ts].astype(np.float64)
    a_prev = np.concatenate([ac32[:1], ac32[ts[:-1]]]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.nan_to_num(eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)))
    return sigma[::-1].astype(np.float32)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [2, 50, 200, 333, 334, 500, 999, 1000])
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_sigma_bound_holds_in_float32_and_clamps_only_where_exceeded(schedule, steps, eta):
    # The sampler takes √(1 − ᾱ_prev − σ²) in float32: with ᾱ_t = 0 (t = 999, reached for S ≥ 334 on the
    # cosine schedule) and η = 1, σ² = 1 − ᾱ_prev exactly, and float32 rounding made the argument negative.
    ac = make_alphas_cumprod(schedule, 1000)
    tab = ddim_tables(ac, steps, eta)
    one = np.float32(1.0)
    slack = one - tab.alpha_prev - tab.sigma * tab.sigma  # float32, as the update computes it
    assert (slack >= 0).all(), f"sigma^2 > 1 - alpha_prev at sampling steps {np.nonzero(slack < 0)[0]}"
    old = _unclamped_sigma(ac, steps, eta)
    fits = one - tab.alpha_prev - old * old >= 0
    np.testing.assert_array_equal(tab.sigma[fits], old[fits])  # untouched wherever the bound held
    assert np.all(tab.sigma[~fits] < old[~fits])
    if schedule == "cosine" and eta == 1.0 and steps >= 334:
        assert not fits[0] and fits[1:].all()  # only the step from ᾱ_999 = 0 is clamped


@pytest.mark.parametrize("steps", [334, 500, 999, 1000])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_is_finite_for_any_eta_and_step_count_on_the_model_schedule(steps, eta):
    from audiosr_jax.diffusion import sampling

    ac = cosine_alphas_cumprod(1000)
    rng = np.random.default_rng(4)
    x_data = jnp.asarray(0.5 * rng.standard_normal((2, 8)), jnp.float32)
    sa_tab, s1_tab = jnp.asarray(np.sqrt(ac), jnp.float32), jnp.asarray(np.sqrt(1 - ac), jnp.float32)

    def oracle(x, t):  # the v that leads every x_t to x_data
        sa, s1 = sa_tab[t][:, None], s1_tab[t][:, None]
        return sa * (x - sa * x_data) / s1 - s1 * x_data

    n = sampling.num_noise_steps("ddim", steps)
    noise = jnp.asarray(rng.standard_normal((n, 2, 8)), jnp.float32)
    x_T = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)
    out = np.asarray(sampling.sample("ddim", oracle, x_T, ac, steps, parameterization="v", eta=eta, noise=noise))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # x₀ = √ᾱ_0·x_data + the last step's noise σ·z (σ ≤ √(1 − ᾱ_0) ≈ 6e-3)
    np.testing.assert_allclose(out, np.sqrt(ac[0]) * np.asarray(x_data), atol=0.05)


def test_ddim_update_clamps_a_slightly_negative_variance_in_graph():
    # A hand-made table whose σ² exceeds 1 − ᾱ_prev by a float32 rounding: the update stays finite and equals
    # σ·z plus the x₀ term (the ε term's coefficient clamped to 0), instead of NaN.
    a_prev = np.float32(0.9999587)
    sigma = np.nextafter(np.sqrt(np.float32(1) - a_prev), np.float32(1))
    assert np.float32(1) - a_prev - sigma * sigma < 0
    tab = DDIMTables(np.array([999], np.int32), np.array([0.0], np.float32), np.array([1.0], np.float32),
                     np.array([a_prev]), np.array([sigma]))
    x_data = jnp.full((1, 4), 0.25, jnp.float32)
    z = jnp.ones((1, 1, 4), jnp.float32)
    out = np.asarray(ddim_sample(lambda x, t: -x_data + 0 * x, jnp.zeros((1, 4)), z, tab))
    np.testing.assert_allclose(out, np.sqrt(a_prev) * 0.25 + sigma, rtol=1e-6)
