"""Training objectives: targets of each parameterisation, conversions back to (x0, eps), loss weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.diffusion import objectives as obj
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod

AC = cosine_alphas_cumprod()  # zero terminal SNR: AC[-1] == 0


@pytest.mark.parametrize("param", obj.PARAMETERIZATIONS)
def test_target_round_trips_to_x0_and_eps(param):
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 4, 8)), rng.standard_normal((2, 4, 8))
    a = np.array([0.3, 0.9])[:, None, None]
    sa, s1 = np.sqrt(a), np.sqrt(1 - a)
    x_t = sa * x0 + s1 * eps
    target = obj.training_target(param, x0, eps, sa, s1)
    x0_hat, eps_hat = obj.prediction_to_x0_eps(param, x_t, target, sa, s1)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-10)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-10)


def test_uniform_v_loss_is_plain_mse_on_v():
    rng = np.random.default_rng(1)
    x0, eps, pred = (jnp.asarray(rng.standard_normal((3, 2, 2, 4)), jnp.float32) for _ in range(3))
    a = jnp.asarray(AC[[0, 500, 999]], jnp.float32)
    v = jnp.sqrt(a)[:, None, None, None] * eps - jnp.sqrt(1 - a)[:, None, None, None] * x0
    np.testing.assert_allclose(obj.diffusion_loss(pred, x0, eps, a, "v"), jnp.mean((pred - v) ** 2), rtol=1e-6)


@pytest.mark.parametrize("weighting", obj.WEIGHTINGS)
@pytest.mark.parametrize("param", obj.PARAMETERIZATIONS)
def test_weights_finite_positive_over_the_whole_schedule(weighting, param):
    w = np.asarray(obj.loss_weight(weighting, param, jnp.asarray(AC, jnp.float32)))
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    if weighting == "uniform":
        np.testing.assert_array_equal(w, 1.0)


def test_weightings_agree_in_x0_space():
    # every parameterisation's weight expresses the same x0-space weight: w_eps = w_x0/snr, w_v = w_x0/(snr+1)
    a = jnp.asarray(AC[10:990:40], jnp.float32)
    snr = np.asarray(a / (1 - a))
    for weighting in ("min_snr", "snr_plus_one"):
        w_x0 = np.asarray(obj.loss_weight(weighting, "x0", a))
        np.testing.assert_allclose(np.asarray(obj.loss_weight(weighting, "v", a)), w_x0 / (snr + 1), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(obj.loss_weight(weighting, "eps", a)), w_x0 / snr, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(obj.loss_weight("min_snr", "x0", a)), np.minimum(snr, 5.0), rtol=1e-6)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown parameterization"):
        obj.training_target("score", 0.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        obj.loss_weight("p2", "v", jnp.ones(2) * 0.5)
