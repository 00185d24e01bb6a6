"""Samplers (DDIM, DPM-Solver++(2M), UniPC, Euler, Heun) against the exact probability-flow ODE of a Gaussian toy,
for every parameterisation and several schedules.

The toy: data x₀ ~ N(μ, s²) independently per dimension. Its noisy marginals are Gaussian, so the oracle
denoiser (posterior mean → v) and the probability-flow ODE have closed forms: the flow keeps the standardised
value z = (x_t − α_t·μ)/√(α_t²s² + σ_t²) constant. Every sampler is then an affine map of x_T per dimension,
which makes the distribution checks exact up to the discretisation error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiosr_jax.diffusion.dpm_solver import (
    dpmpp_2m_sample,
    dpmpp_2m_timesteps,
    multistep_sample,
    multistep_tables,
    sampler_timesteps,
    unipc_sample,
)
from audiosr_jax.diffusion import parameterization as pz
from audiosr_jax.diffusion import sampling
from audiosr_jax.diffusion.ode import euler_sample, heun_sample, ode_tables
from audiosr_jax.diffusion.samplers import DDIMTables, ddim_sample, ddim_tables, ddim_timesteps
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod, make_alphas_cumprod

AC = cosine_alphas_cumprod()
MU = np.array([0.7, -0.3, 1.2, 0.0, -1.0, 0.4, 0.2, -0.6])
STD = np.array([0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5])
SAMPLERS = {"dpmpp_2m": dpmpp_2m_sample, "unipc": unipc_sample}


def gaussian_denoiser(mu, std):
    """Oracle v-prediction for x₀ ~ N(mu, std²) per dimension (last axis): v = (α·x_t − E[x₀|x_t])/σ."""
    ac = jnp.asarray(AC, jnp.float32)
    mu, var = jnp.asarray(mu, jnp.float32), jnp.asarray(np.square(std), jnp.float32)

    def denoise(x, t):
        a = ac[t].reshape((-1,) + (1,) * (x.ndim - 1))
        alpha, sigma = jnp.sqrt(a), jnp.sqrt(1.0 - a)
        x0 = mu + alpha * var / (a * var + 1.0 - a) * (x - alpha * mu)
        return ((alpha * x - x0) / sigma).astype(x.dtype)

    return denoise


def exact_flow(x, t_from, t_to, mu=MU, std=STD):
    """Probability-flow ODE solution from x at t_from to t_to (float64, closed form)."""
    a0, a1 = AC[t_from], AC[t_to]
    z = (x - np.sqrt(a0) * mu) / np.sqrt(a0 * std ** 2 + 1 - a0)
    return np.sqrt(a1) * mu + np.sqrt(a1 * std ** 2 + 1 - a1) * z


def posterior_mean(x, t, mu=MU, std=STD):
    a = AC[t]
    return mu + np.sqrt(a) * std ** 2 / (a * std ** 2 + 1 - a) * (x - np.sqrt(a) * mu)


def exact_sampler_output(x_T, timesteps):
    """What a multistep sampler converges to: the ODE from timesteps[0] to t=1, then x̂₀ there."""
    return posterior_mean(exact_flow(np.asarray(x_T, np.float64), timesteps[0], timesteps[-1]), timesteps[-1])


def standard_normal(shape, seed=0):
    """Normal draws standardised per last-axis dimension, so their sample mean/std are exactly 0/1."""
    x = np.random.default_rng(seed).standard_normal(shape)
    x = (x - x.mean(0)) / x.std(0)
    return jnp.asarray(x, jnp.float32)


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def toy_errors(steps, x_T=None, spacing="logsnr"):
    """RMS error vs the exact ODE solution from the same start: {sampler: [error per step count]}.

    DDIM is the reference sampler (η=0 on its own grid, ending at the ᾱ₀ level, compared with the ODE solution
    there); the others return x̂₀ at t=1 and are compared with x̂₀ of the exact solution at t=1.
    """
    x_T = standard_normal((256, len(MU)), 1) if x_T is None else x_T
    den = gaussian_denoiser(MU, STD)
    out = {"ddim": [], "dpmpp_2m": [], "unipc": []}
    for n in steps:
        tab = ddim_tables(AC, n, eta=0.0)
        x = ddim_sample(den, x_T, jnp.zeros((len(tab.timesteps),) + x_T.shape), tab)
        out["ddim"].append(rms(x, exact_flow(np.asarray(x_T, np.float64), tab.timesteps[0], 0)))
        ts = dpmpp_2m_timesteps(n, spacing=spacing)
        for name, fn in SAMPLERS.items():
            out[name].append(rms(fn(den, x_T, AC, n, spacing), exact_sampler_output(x_T, ts)))
    return out


# ------------------------------------------------------------------------------------------------ grids


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 50, 200, 998])
def test_logsnr_grid_spans_998_to_1(n):
    ts = dpmpp_2m_timesteps(n)
    assert len(ts) == n and ts[0] == 998 and (ts[-1] == 1 or n == 1)
    assert np.all(np.diff(ts) < 0)
    np.testing.assert_array_equal(ts, sampler_timesteps(n, AC))


def test_logsnr_grid_is_uniform_in_lambda():
    lam = 0.5 * np.log(AC[:999] / (1 - AC[:999]))
    steps = np.diff(lam[dpmpp_2m_timesteps(20)])
    target = (lam[1] - lam[998]) / 19
    # integer rounding only distorts the two ends of the cosine schedule, where one t is a large λ step
    np.testing.assert_allclose(steps[5:-2], target, rtol=0.05)
    assert steps.min() > 0.3 * target


@pytest.mark.parametrize("n", [2, 3, 10, 20, 50, 200])
def test_uniform_grid_is_the_reference_ddim_grid(n):
    np.testing.assert_array_equal(sampler_timesteps(n, AC, "uniform"), ddim_timesteps(n)[::-1])


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="spacing"):
        sampler_timesteps(10, AC, "karras")
    for n in (0, 999):
        with pytest.raises(ValueError, match="steps"):
            sampler_timesteps(n, AC)
    with pytest.raises(ValueError, match="descending"):
        multistep_tables(AC, np.array([1, 5]))
    ac = AC.copy()
    ac[500] = 0.0  # ᾱ = 0 is only allowed at the first timestep
    with pytest.raises(ValueError, match="alpha_cumprod = 0"):
        multistep_tables(ac, np.array([999, 500, 1]))


# ------------------------------------------------------------------------------------------------ algebra


def _dpmpp_2m_textbook(denoise, x_T, ts):
    """DPM-Solver++(2M) written directly from Lu et al. (2022), Algorithm 2, in λ, in float64 NumPy."""
    a = AC[ts]
    alpha, sigma, lam = np.sqrt(a), np.sqrt(1 - a), 0.5 * np.log(a / (1 - a))
    x, d_old = np.asarray(x_T, np.float64), None
    for i in range(len(ts)):
        v = np.asarray(denoise(jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), ts[i], jnp.int32)), np.float64)
        d = alpha[i] * x - sigma[i] * v
        if i == len(ts) - 1:
            return d
        h = lam[i + 1] - lam[i]
        if d_old is None:
            dd = d
        else:
            r = (lam[i] - lam[i - 1]) / h
            dd = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_old
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * np.expm1(-h) * dd
        d_old = d


def _nonlinear_denoiser(x, t):
    """A smooth, non-linear stand-in for a network: v depends on x and t non-trivially."""
    tf = t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1)) / 1000.0
    return jnp.tanh(1.3 * x + tf) * (0.5 + tf) + 0.1 * jnp.sin(3.0 * x * tf)


@pytest.mark.parametrize("spacing", ["logsnr", "uniform"])
def test_dpmpp_2m_matches_textbook_update(spacing):
    x_T = standard_normal((3, 6), 2)
    ts = sampler_timesteps(12, AC, spacing)
    got = dpmpp_2m_sample(_nonlinear_denoiser, x_T, AC, 12, spacing)
    want = _dpmpp_2m_textbook(_nonlinear_denoiser, x_T, ts)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_first_order_method_is_ddim_eta0():
    # On the reference grid, all but the last step are DDIM(η=0) steps; DDIM's last step goes to the ᾱ₀ level
    # where ours returns x̂₀ at t=1. So DDIM's output = √ᾱ₀·x̂₀ + √(1−ᾱ₀)·ε̂ with ours as x̂₀.
    x_T = standard_normal((4, 5), 3)
    n = 10
    ddim = ddim_sample(_nonlinear_denoiser, x_T, jnp.zeros((n,) + x_T.shape), ddim_tables(AC, n, eta=0.0))
    ts = sampler_timesteps(n, AC, "uniform")
    x0 = multistep_sample(_nonlinear_denoiser, x_T, multistep_tables(AC, ts, "ddim"))
    # ε̂ at t=1 from DDIM's own output: x_end = √ᾱ₀·x̂₀ + √(1−ᾱ₀)·ε̂ with x_1 = √ᾱ₁·x̂₀ + √(1−ᾱ₁)·ε̂
    eps = (np.asarray(ddim) - np.sqrt(AC[0]) * np.asarray(x0)) / np.sqrt(1 - AC[0])
    x1 = np.sqrt(AC[1]) * np.asarray(x0) + np.sqrt(1 - AC[1]) * eps
    v1 = np.asarray(_nonlinear_denoiser(jnp.asarray(x1, jnp.float32), jnp.ones((4,), jnp.int32)))
    np.testing.assert_allclose(np.sqrt(AC[1]) * x1 - np.sqrt(1 - AC[1]) * v1, x0, atol=2e-4)


def test_network_called_once_per_grid_timestep_in_order():
    seen = []

    def denoise(x, t):
        jax.debug.callback(lambda tt: seen.append(int(tt[0])), t, ordered=True)
        return _nonlinear_denoiser(x, t)

    for fn in SAMPLERS.values():
        seen.clear()
        jax.block_until_ready(fn(denoise, standard_normal((2, 3)), AC, 7))
        jax.effects_barrier()
        assert seen == list(dpmpp_2m_timesteps(7))


# ------------------------------------------------------------------------------------------------ Gaussian toy


def _law(sample):
    sample = np.asarray(sample, np.float64)
    return sample.mean(0), sample.std(0)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "unipc"])
def test_gaussian_toy_distribution_is_recovered(name):
    # x_T has exact sample moments 0/1 and every sampler is affine in x_T here, so the output's sample
    # mean/std are its exact law's: the tolerance measures the sampler, not the Monte Carlo noise.
    x_T = standard_normal((2048, len(MU)), 4)
    den = gaussian_denoiser(MU, STD)
    if name == "ddim":
        tab = ddim_tables(AC, 200, eta=0.0)
        out = ddim_sample(den, x_T, jnp.zeros((200,) + x_T.shape), tab)
    else:
        out = SAMPLERS[name](den, x_T, AC, 25)
    mean, std = _law(out)
    keep = STD >= 0.1  # s = 0.05 ≈ 5σ at t=1: no sampler that stops at t=1 resolves it (see the floor test)
    np.testing.assert_allclose(mean[keep], MU[keep], atol=0.03 * STD[keep].max())
    np.testing.assert_array_less(np.abs(mean - MU)[keep] / STD[keep], 0.03)
    np.testing.assert_allclose(std[keep], STD[keep], rtol=0.03)


def test_end_at_t1_floor_for_the_finest_scale():
    # x̂₀ at t=1 shrinks a scale s by 1/√(1 + σ₁²/(α₁s)²) relative to the ODE endpoint: 1.7 % for s = 0.05.
    x_T = standard_normal((2048, len(MU)), 4)
    _, std = _law(dpmpp_2m_sample(gaussian_denoiser(MU, STD), x_T, AC, 50))
    shrink = 1 / np.sqrt(1 + (1 - AC[1]) / (AC[1] * STD ** 2))
    np.testing.assert_allclose(std / STD, shrink, atol=0.01)


@pytest.mark.parametrize("spacing", ["logsnr", "uniform"])
@pytest.mark.parametrize("n", [2, 5, 50])
def test_point_mass_is_recovered(spacing, n):
    mu = np.linspace(-1.5, 2.0, 6)
    den = gaussian_denoiser(mu, np.zeros_like(mu))
    x_T = standard_normal((64, 6), 5) * 3
    for fn in SAMPLERS.values():
        out = np.asarray(fn(den, x_T, AC, n, spacing))
        np.testing.assert_allclose(out, np.broadcast_to(mu, x_T.shape), atol=1e-3)


def test_point_mass_through_ddim_keeps_alpha0_noise():
    # The reference DDIM ends at the ᾱ₀ level: x = √ᾱ₀·μ + √(1−ᾱ₀)·ε with ε the start noise carried along the
    # flow, i.e. an offset of ≈0.0064·|x_T| that the fast samplers do not have.
    mu = np.linspace(-1.5, 2.0, 6)
    den = gaussian_denoiser(mu, np.zeros_like(mu))
    x_T = standard_normal((64, 6), 5)
    tab = ddim_tables(AC, 50, eta=0.0)
    out = np.asarray(ddim_sample(den, x_T, jnp.zeros((50,) + x_T.shape), tab))
    t0 = tab.timesteps[0]
    eps = (np.asarray(x_T, np.float64) - np.sqrt(AC[t0]) * mu) / np.sqrt(1 - AC[t0])
    np.testing.assert_allclose(out, np.sqrt(AC[0]) * mu + np.sqrt(1 - AC[0]) * eps, atol=2e-5)


def test_exact_flow_is_the_1000_step_ddim_solution():
    # The closed form used as the reference is what DDIM(η=0) converges to: 998 steps over every integer t
    # from 998 (ᾱ > 0) to 1 agree with it to DDIM's first-order error, and halving the steps doubles that.
    x_T = standard_normal((256, len(MU)), 6)
    den = gaussian_denoiser(MU, STD)
    errs = []
    for stride in (1, 2):
        ts = np.arange(998, 1, -stride)  # 998 … 2 (or 3), then a last DDIM step onto t=1
        a = AC[ts]
        a_prev = np.append(AC[ts[1:]], AC[1])
        tab = DDIMTables(ts.astype(np.int32), np.sqrt(a).astype(np.float32), np.sqrt(1 - a).astype(np.float32),
                         a_prev.astype(np.float32), np.zeros(len(ts), np.float32))
        x1 = ddim_sample(den, x_T, jnp.zeros((len(ts),) + x_T.shape), tab)
        errs.append(rms(x1, exact_flow(np.asarray(x_T, np.float64), 998, 1)))
    assert errs[0] < 3e-3  # vs 1.4e-2 / 3.6e-3 for DPM-Solver++(2M) at 20 / 40 steps
    assert 1.8 < errs[1] / errs[0] < 2.2


def test_convergence_orders():
    # Against the exact ODE solution from each run's start: DDIM (reference grid) is first order, ×2 per
    # doubling; DPM-Solver++(2M) second order, ×4 from 20 steps on (at 10 steps its λ-steps are 1.2 and the
    # leading error term does not dominate yet: ×2.0 from 10 to 20); UniPC third order, ×8 from 20 steps on.
    e = toy_errors([10, 20, 40, 80])
    ratio = {k: np.array(v[:-1]) / np.array(v[1:]) for k, v in e.items()}
    assert np.all((1.7 < ratio["ddim"]) & (ratio["ddim"] < 2.3)), ratio
    assert ratio["dpmpp_2m"][0] > 1.8 and np.all((3.3 < ratio["dpmpp_2m"][1:]) & (ratio["dpmpp_2m"][1:] < 5)), ratio
    assert ratio["unipc"][0] > 3 and np.all(ratio["unipc"][1:] > 6.5), ratio
    e = {k: np.array(v) for k, v in e.items()}
    assert np.all(e["dpmpp_2m"] < 0.35 * e["ddim"]), e
    assert np.all(e["unipc"][1:] < 0.75 * e["dpmpp_2m"][1:]), e


# ------------------------------------------------------------------------------------------------ jit / dtype


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_jit_batch_of_three(name):
    fn = SAMPLERS[name]
    x_T = jax.random.normal(jax.random.key(0), (3, 4, 6, 2))
    run = jax.jit(lambda x: fn(_nonlinear_denoiser, x, AC, 8))
    out = run(x_T)
    assert out.shape == x_T.shape and out.dtype == x_T.dtype
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(fn(_nonlinear_denoiser, x_T, AC, 8)), atol=1e-5)
    # Each batch item is sampled independently.
    np.testing.assert_allclose(np.asarray(run(x_T)[1:2]), np.asarray(fn(_nonlinear_denoiser, x_T[1:2], AC, 8)),
                               atol=1e-5)


def test_bf16_input_keeps_dtype_and_float32_state():
    x_T = standard_normal((8, len(MU)), 7)
    den = gaussian_denoiser(MU, STD)
    out = dpmpp_2m_sample(den, x_T.astype(jnp.bfloat16), AC, 20)
    assert out.dtype == jnp.bfloat16
    ref = dpmpp_2m_sample(den, x_T, AC, 20)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.05)


def test_start_at_zero_snr_is_finite_and_first_order():
    # A table may start at ᾱ = 0 (λ = −∞, x_T exactly the state there): the first step is the first-order limit
    # x₁ = σ₁·x_T + α₁·x̂₀ and the next one first order too (h_{i−1}/h_i = ∞); the result is the ODE solution.
    x_T = standard_normal((64, len(MU)), 8)
    den = gaussian_denoiser(MU, STD)
    ts = np.concatenate([[999], dpmpp_2m_timesteps(10)])
    for method in ("dpmpp_2m", "unipc"):
        tab = multistep_tables(AC, ts, method)
        assert np.all(np.isfinite(tab.predictor)) and np.all(np.isfinite(tab.corrector))
        out = multistep_sample(den, x_T, tab)
        assert rms(out, exact_sampler_output(x_T, ts)) < 0.05  # 0.03–0.04 at 10 steps from t=998


# ------------------------------------------------------------------------------------------------ any schedule ×
# parameterisation × sampler (sampling.sample: the model's own prediction, wrapped into v)

ALL_SAMPLERS = sampling.SAMPLERS


def toy_denoiser(ac, parameterization, mu, std):
    """Oracle for x₀ ~ N(mu, std²) per dimension under schedule `ac`, answering in `parameterization`:
    the exact posterior mean E[x₀|x_t] and the ε it implies. std = 0 is a point mass at mu."""
    ac32 = jnp.asarray(ac, jnp.float32)
    sa_tab, s1_tab = jnp.asarray(np.sqrt(ac), jnp.float32), jnp.asarray(np.sqrt(1 - ac), jnp.float32)
    mu, var = jnp.asarray(mu, jnp.float32), jnp.asarray(np.square(std), jnp.float32)

    def denoise(x, t):
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, sa, s1 = ac32[t].reshape(shape), sa_tab[t].reshape(shape), s1_tab[t].reshape(shape)
        x0 = mu + sa * var / (a * var + 1.0 - a) * (x - sa * mu)
        eps = (x - sa * x0) / s1
        return pz.from_x0_eps(parameterization, x0, eps, sa, s1).astype(x.dtype)

    return denoise


def _exact_end(ac, sampler, x_T, num_steps, mu, std):
    """What `sampler` converges to from x_T: the ODE solution carried to its end (DDIM: the ᾱ₀ level; the
    others: x̂₀ at t=1)."""
    x = np.asarray(x_T, np.float64)
    ts = sampling.network_timesteps(sampler, ac, num_steps)

    def flow(t_from, t_to):
        a0, a1 = ac[t_from], ac[t_to]
        z = (x - np.sqrt(a0) * mu) / np.sqrt(a0 * std ** 2 + 1 - a0)
        return np.sqrt(a1) * mu + np.sqrt(a1 * std ** 2 + 1 - a1) * z

    if sampler in ("ddim", "ddim_progressive"):  # both step to the ᾱ₀ level last
        return flow(ts[0], 0)
    a = ac[ts[-1]]
    return mu + np.sqrt(a) * std ** 2 / (a * std ** 2 + 1 - a) * (flow(ts[0], ts[-1]) - np.sqrt(a) * mu)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "scaled_linear_zero_snr"])
def test_point_mass_recovered_by_every_sampler_and_parameterisation(schedule):
    # The denoiser returns the true x₀ (in the model's parameterisation): every sampler lands on it exactly
    # (DDIM: at its ᾱ₀ level, with the start noise carried along), whatever the schedule.
    ac = make_alphas_cumprod(schedule)
    mu = np.linspace(-1.5, 2.0, 6)
    x_T = standard_normal((16, 6), 5) * 2
    for param in pz.PARAMETERIZATIONS:
        den = toy_denoiser(ac, param, mu, np.zeros_like(mu))
        for sampler in ALL_SAMPLERS:
            if _starts_at_zero_snr(sampler, ac, param):
                continue  # refused: test_undefined_combinations_are_refused
            out = sampling.sample(sampler, den, x_T, ac, 4, parameterization=param, eta=0.0)
            want = _exact_end(ac, sampler, x_T, 4, mu, np.zeros_like(mu))
            np.testing.assert_allclose(np.asarray(out), want, atol=1e-3, err_msg=f"{sampler} {param}")


def _starts_at_zero_snr(sampler: str, ac, param: str) -> bool:
    """ddim_progressive (a distilled student's grid) starts at t = T − 1: with ᾱ = 0 there (zero terminal SNR)
    an ε-model cannot be sampled with it."""
    return sampler == "ddim_progressive" and param == "eps" and ac[-1] == 0


# steps per sampler for the distribution check: first-order methods need many more
TOY_STEPS = {"ddim": 200, "euler": 200, "heun": 40, "dpmpp_2m": 25, "unipc": 25, "ddim_progressive": 200}


@pytest.mark.parametrize("schedule,params", [("cosine", ("eps", "x0")), ("linear", ("eps",)),
                                             ("linear_zero_snr", ("x0",))])
def test_gaussian_toy_law_for_every_sampler_and_parameterisation(schedule, params):
    # Exact posterior mean as the denoiser: the samples have the data's mean and std (per dimension) to
    # 3 % of the std. As in test_gaussian_toy_distribution_is_recovered, x_T has exact sample moments and each
    # sampler is affine in x_T, so the tolerance measures the sampler. Scales below the t=1 floor are skipped.
    # (Not the default sigmoid: its ᾱ_998 = 3e-4, so starting from pure noise there drops √ᾱ = 1.7 % of the
    # mean, a start bias of the schedule that no sampler removes.)
    ac = make_alphas_cumprod(schedule)
    x_T = standard_normal((512, len(MU)), 4)
    keep = STD >= 0.1 if schedule == "cosine" else STD >= 0.2
    for param in params:
        den = toy_denoiser(ac, param, MU, STD)
        for sampler in ALL_SAMPLERS:
            if _starts_at_zero_snr(sampler, ac, param):
                continue
            out = sampling.sample(sampler, den, x_T, ac, TOY_STEPS[sampler], parameterization=param, eta=0.0)
            mean, std = _law(out)
            msg = f"{sampler} {param}"
            np.testing.assert_array_less(np.abs(mean - MU)[keep] / STD[keep], 0.03, err_msg=msg)
            np.testing.assert_allclose(std[keep], STD[keep], rtol=0.03, err_msg=msg)


@pytest.mark.parametrize("schedule,spacing", [("cosine", "logsnr"), ("cosine", "uniform"), ("linear", "logsnr")])
def test_euler_is_ddim_eta0_on_the_same_grid(schedule, spacing):
    # Euler in Karras' (x/α, σ/α) form and DDIM(η=0) are one method: on the same grid, with DDIM's last step
    # taken to ᾱ = 1 (σ = 0, i.e. x̂₀) instead of the reference's ᾱ₀ level, they agree to rounding.
    ac = make_alphas_cumprod(schedule)
    x_T = standard_normal((4, 6), 9)
    ts = sampler_timesteps(12, ac, spacing)
    a = ac[ts]
    a_prev = np.append(a[1:], 1.0)
    tab = DDIMTables(ts.astype(np.int32), np.sqrt(a).astype(np.float32), np.sqrt(1 - a).astype(np.float32),
                     a_prev.astype(np.float32), np.zeros(len(ts), np.float32))
    ddim = ddim_sample(_nonlinear_denoiser, x_T, jnp.zeros((len(ts),) + x_T.shape), tab)
    euler = euler_sample(_nonlinear_denoiser, x_T, ac, 12, spacing)
    np.testing.assert_allclose(np.asarray(euler), np.asarray(ddim), rtol=1e-5, atol=1e-5)


def _heun_textbook(denoise, x_T, ac, ts):
    """Karras et al. (2022), Algorithm 1 (Heun, 2nd order) in x̃ = x/α, σ̃ = σ/α, float64 NumPy; the last
    timestep's x̂₀ is the output (the σ → 0 Euler step)."""
    a = ac[ts]
    alpha, sig = np.sqrt(a), np.sqrt(1 - a) / np.sqrt(a)

    def D(x_tilde, i):
        x = x_tilde * alpha[i]
        v = np.asarray(denoise(jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), ts[i], jnp.int32)), np.float64)
        return alpha[i] * x - np.sqrt(1 - a[i]) * v

    xt = np.asarray(x_T, np.float64) / alpha[0]
    for i in range(len(ts) - 1):
        d = (xt - D(xt, i)) / sig[i]
        x_e = xt + (sig[i + 1] - sig[i]) * d
        d2 = (x_e - D(x_e, i + 1)) / sig[i + 1]
        xt = xt + (sig[i + 1] - sig[i]) * (d + d2) / 2
    return D(xt, len(ts) - 1)


@pytest.mark.parametrize("schedule", ["cosine", "scaled_linear"])
def test_heun_matches_textbook_karras(schedule):
    ac = make_alphas_cumprod(schedule)
    x_T = standard_normal((3, 6), 2)
    got = heun_sample(_nonlinear_denoiser, x_T, ac, 10)
    want = _heun_textbook(_nonlinear_denoiser, x_T, ac, sampler_timesteps(10, ac))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_heun_beats_euler_at_equal_steps_and_is_second_order():
    # Errors vs the exact ODE solution on the Gaussian toy (cosine, v). At ≤ 10 λ-uniform steps (log-SNR
    # steps ≥ 1.1) Heun's trapezoid in σ̃ is no better than Euler; from 20 steps on it is, at 2× the calls.
    x_T = standard_normal((256, len(MU)), 1)
    den = gaussian_denoiser(MU, STD)
    err = {}
    for name, fn in (("euler", euler_sample), ("heun", heun_sample)):
        err[name] = np.array([rms(fn(den, x_T, AC, n), _exact_end(AC, name, x_T, n, MU, STD)) for n in (20, 40, 80)])
    assert np.all(err["heun"] < 0.5 * err["euler"]), err
    r_euler, r_heun = err["euler"][:-1] / err["euler"][1:], err["heun"][:-1] / err["heun"][1:]
    assert np.all((1.7 < r_euler) & (r_euler < 2.3)), r_euler
    assert np.all((3.3 < r_heun) & (r_heun < 5.5)), r_heun


def test_heun_calls_the_network_2s_minus_1_times():
    seen = []

    def denoise(x, t):
        jax.debug.callback(lambda tt: seen.append(int(tt[0])), t, ordered=True)
        return _nonlinear_denoiser(x, t)

    jax.block_until_ready(heun_sample(denoise, standard_normal((2, 3)), AC, 5))
    jax.effects_barrier()
    ts = list(sampler_timesteps(5, AC))
    assert seen == [ts[0]] + [t for t in ts[1:] for _ in range(2)]  # t_i, then t_{i+1} twice (correct, restart)
    assert len(seen) == sampling.num_network_calls("heun", 5) == 9


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc"])
def test_v_model_path_is_the_plain_sampler(sampler):
    # sampling.sample for a v-model adds nothing: bit-identical to calling the sampler directly.
    x_T = standard_normal((3, 5), 11)
    noise = jnp.asarray(np.random.default_rng(12).standard_normal((8, 3, 5)), jnp.float32)
    got = sampling.sample(sampler, _nonlinear_denoiser, x_T, AC, 7, eta=1.0, noise=noise)
    if sampler == "ddim":
        want = ddim_sample(_nonlinear_denoiser, x_T, noise, ddim_tables(AC, 7, 1.0))
    else:
        want = SAMPLERS[sampler](_nonlinear_denoiser, x_T, AC, 7)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_wrapped_parameterisations_give_the_same_samples():
    # One oracle answering in ε, v or x₀: after the wrapper, every sampler sees the same v (to float32 rounding).
    ac = make_alphas_cumprod("scaled_linear")
    x_T = standard_normal((8, len(MU)), 13)
    outs = {p: np.asarray(sampling.sample("unipc", toy_denoiser(ac, p, MU, STD), x_T, ac, 8, parameterization=p))
            for p in pz.PARAMETERIZATIONS}
    np.testing.assert_allclose(outs["eps"], outs["v"], atol=1e-4)
    np.testing.assert_allclose(outs["x0"], outs["v"], atol=1e-4)


def test_undefined_combinations_are_refused():
    x_T = standard_normal((2, 3))
    den = toy_denoiser(AC, "eps", np.zeros(3), np.ones(3))
    # DDIM with S = T visits t = 999, where ᾱ = 0: x₀ from ε is undefined there
    assert 999 in sampling.network_timesteps("ddim", AC, 1000)
    with pytest.raises(ValueError, match="eps-prediction.*t=999"):
        sampling.sample("ddim", den, x_T, AC, 1000, parameterization="eps", eta=0.0)
    # the default grids never visit ᾱ = 0, for any zero-terminal-SNR schedule; a distilled student's grid
    # (ddim_progressive) starts there by construction, so it refuses ε-models on such schedules
    with pytest.raises(ValueError, match="eps-prediction.*t=999"):
        sampling.sample("ddim_progressive", den, x_T, AC, 4, parameterization="eps", eta=0.0)
    for schedule in ("cosine", "linear_zero_snr", "scaled_linear_zero_snr", "sigmoid"):
        ac = make_alphas_cumprod(schedule)
        for sampler in (s for s in ALL_SAMPLERS if s != "ddim_progressive"):
            for n in (1, 10, 50, 200):
                assert np.all(ac[sampling.network_timesteps(sampler, ac, n)] > 0), (schedule, sampler, n)
    # Heun cannot start at ᾱ = 0 (σ/α = ∞); Euler can (its α/σ form has the limit)
    with pytest.raises(ValueError, match="Heun"):
        ode_tables(AC, np.array([999, 500, 1]), "heun")
    assert np.all(np.isfinite(ode_tables(AC, np.array([999, 500, 1]), "euler").coef))
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling.sample("plms", den, x_T, AC, 10)
    with pytest.raises(ValueError, match="unknown parameterization"):
        sampling.sample("ddim", den, x_T, AC, 10, parameterization="score")
    with pytest.raises(ValueError, match="noise"):
        sampling.sample("ddim", den, x_T, AC, 10, eta=1.0)


@pytest.mark.parametrize("T", [1000, 300])
def test_noise_steps_and_network_calls(T):
    ac = make_alphas_cumprod("cosine", T)
    for n in (1, 7, 50):
        assert sampling.num_noise_steps("ddim", n, T) == len(ddim_tables(ac, n).timesteps)
        for s in ("dpmpp_2m", "unipc", "euler", "heun"):
            assert sampling.num_noise_steps(s, n, T) == n == len(sampling.network_timesteps(s, ac, n))
        assert sampling.num_network_calls("heun", n, T) == 2 * n - 1
        assert sampling.num_network_calls("euler", n, T) == n
