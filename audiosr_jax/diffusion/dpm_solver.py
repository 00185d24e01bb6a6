"""Fast deterministic samplers for the v-prediction model: DPM-Solver++(2M) and UniPC (bh2).

Both integrate the probability-flow ODE in its data-prediction form (Lu et al. 2022, "DPM-Solver++";
Zhao et al. 2023, "UniPC"). With α = √ᾱ, σ = √(1−ᾱ) and λ = log(α/σ), the network's v gives the data
prediction D = x̂₀ = α·x_t − σ·v, and one step from t_i to t_{i+1} (h = λ_{i+1} − λ_i > 0) reads

    x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}·(1 − e^{−h})·D̂,

where D̂ = D_i is DDIM(η=0) (first order) and D̂ = D_i + (D_i − D_{i−1})/(2r), r = h_{i−1}/h, is
DPM-Solver++(2M). Every step is therefore a fixed linear combination of the state and the last few data
predictions. The coefficients depend only on the grid, so they are computed once on the host in float64 and
the device runs one `lax.scan` of multiply-adds around the network call.

Conventions (shared by both samplers):

* **Grid.** The network is evaluated at `num_steps` integer training timesteps, descending, ending at t = 1
  as the reference DDIM does. The default ("logsnr") is uniform in λ from the largest t with ᾱ > 0 (998 for
  AudioSR) to t = 1, rounded to integers. "uniform" is the reference DDIM's own grid t = k·⌊T/S⌋ + 1 (first t
  = 981 for 50 steps), for a like-for-like comparison with DDIM at equal steps. Why λ-uniform: on the Gaussian
  toy of tests/test_samplers.py it has 2–3× smaller ODE error than DDIM's time-uniform grid at 10–50 steps (the
  cosine schedule's λ(t) is steep at both ends, so time-uniform steps there are large in λ, which a multistep
  method extrapolating over h_{i−1}/h_i handles badly), it shows the clean asymptotic orders, and its start
  at 998 removes the start bias below.
* **Start, x_T and zero terminal SNR.** AudioSR's ᾱ_999 = 0 (σ = 1, λ = −∞) is never a grid point: a start
  there moves to the largest t with ᾱ > 0. As in the reference DDIM, x_T (standard normal) is used as the state
  at the first timestep. The true marginal there is √ᾱ·x₀ + √(1−ᾱ)·ε, so this drops a signal part of relative
  size √ᾱ_first: 0.0016 at t = 998, but 0.028 at DDIM's 50-step start (t = 981) and 0.15 at its 10-step start
  (t = 901), a bias that no step count removes; hence the default grid starts at 998 whatever the step count.
  The first step is first order (no history); that is also the only well-defined step from λ = −∞, which
  `multistep_tables` accepts for a first timestep with ᾱ = 0.
* **End.** After the network call at the last timestep (t = 1) the samplers return that call's data
  prediction x̂₀, i.e. the σ → 0 limit of the first-order step (e^{−h} → 0). The reference DDIM instead steps to
  the ᾱ₀ = 0.99996 level and so leaves √(1−ᾱ₀) = 0.0064 of predicted noise in its output. Returning x̂₀ costs no
  extra network call and makes a point-mass data distribution come out exact; a second-order step to σ = 0 is
  not defined (r → 0), so this is the usual choice (k-diffusion, diffusers' final_sigmas_type="zero").

Measured on that toy (RMS error vs the exact ODE solution; data std 0.05–1.5):

    steps                     5        10       20       50
    DDIM η=0, DDIM grid     1.4e-1   8.4e-2   4.6e-2   2.0e-2
    DPM-Solver++(2M)        1.6e-1   2.7e-2   1.4e-2   2.3e-3
    UniPC                   1.4e-1   4.4e-2   1.0e-2   6.9e-4

so UniPC pays from about 20 steps on; at 10 steps DPM-Solver++(2M) is the better of the two.

A denoiser is `denoise(x_t [B, ...], t [B] int32) -> v` (see `samplers.classifier_free_guidance`). The state is
carried in float32 whatever x_T's dtype (a bf16 network only sees a rounded copy of it); the result has x_T's
dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.diffusion.sampler_spec import SamplerSpec
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod

__all__ = [
    "sampler_timesteps",
    "dpmpp_2m_timesteps",
    "unipc_timesteps",
    "MultistepTables",
    "multistep_tables",
    "multistep_sample",
    "dpmpp_2m_sample",
    "unipc_sample",
]

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]

SPACINGS = ("logsnr", "uniform")


# --------------------------------------------------------------------------------------------- timesteps


def _log_snr(ac: np.ndarray) -> np.ndarray:
    """λ = log(α/σ) = ½·log(ᾱ/(1−ᾱ)); −∞ where ᾱ = 0."""
    with np.errstate(divide="ignore"):
        return 0.5 * (np.log(ac) - np.log1p(-ac))


def sampler_timesteps(num_steps: int, alphas_cumprod: np.ndarray, spacing: str = "logsnr") -> np.ndarray:
    """The `num_steps` training timesteps a sampler evaluates the network at, descending (int64 [S]); last t = 1.

    alphas_cumprod: the ᾱ table (float64 [T]).
    spacing:
      * "logsnr" (default): uniform in λ = log(α/σ) from the largest t with ᾱ > 0 (998 for AudioSR) to t = 1,
        each point rounded to the nearest integer t.
      * "uniform": the reference DDIM's grid, time-uniform from (S−1)·⌊T/S⌋+1 down to 1. When S divides T this
        is exactly `samplers.ddim_timesteps(S)` reversed; otherwise DDIM takes a few extra steps, here S is exact.
    With num_steps = 1 the single call is at the first timestep (998, or 1 for "uniform" as in DDIM).
    Rounding never repeats a timestep (near the ends of the cosine schedule one integer step is a large λ step,
    so several λ targets can round to the same t; they are spread to neighbouring integers).
    """
    ac = np.asarray(alphas_cumprod, np.float64)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {SPACINGS}")
    nz = np.flatnonzero(ac > 0)
    if len(nz) == 0 or nz[-1] < 1:
        raise ValueError("the schedule needs alpha_cumprod > 0 at t >= 1")
    t_pos = int(nz[-1])  # largest t with ᾱ > 0
    if not 1 <= num_steps <= t_pos:
        raise ValueError(f"number of sampling steps must be in [1, {t_pos}], got {num_steps}")
    if spacing == "uniform":
        t_first = min((num_steps - 1) * (len(ac) // num_steps) + 1, t_pos)
        ts = np.linspace(t_first, 1, num_steps)
    else:
        t_first = t_pos
        lam = _log_snr(ac)
        grid = np.arange(1, t_first + 1)
        targets = np.linspace(lam[t_first], lam[1], num_steps)
        # λ(t) decreases with t, so interpolate t(λ) on the reversed (increasing-λ) table.
        ts = np.interp(targets, lam[grid][::-1], grid[::-1].astype(np.float64))
    return _strictly_descending(np.rint(ts).astype(np.int64), t_first)


def _strictly_descending(ts: np.ndarray, t_first: int) -> np.ndarray:
    """Nudge rounded timesteps so that they strictly decrease from t_first to 1 (no zero-length step)."""
    if len(ts) == 1:  # one call: the x̂₀ prediction at the first timestep
        return np.array([t_first], np.int64)
    ts = ts.copy()
    n = len(ts)
    ts[0], ts[-1] = t_first, 1
    for i in range(n - 2, 0, -1):  # from the low end: each at least one above its successor
        ts[i] = max(ts[i], ts[i + 1] + 1)
    for i in range(1, n):  # and below its predecessor
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts


def dpmpp_2m_timesteps(num_steps: int, num_timesteps: int = 1000, spacing: str = "logsnr",
                       alphas_cumprod: np.ndarray | None = None) -> np.ndarray:
    """Descending int timesteps DPM-Solver++(2M) (and UniPC) sample on ([num_steps]); see `sampler_timesteps`.

    Without `alphas_cumprod` the AudioSR schedule (unclipped cosine, `num_timesteps` long) is assumed.
    """
    if alphas_cumprod is None:
        alphas_cumprod = cosine_alphas_cumprod(num_timesteps)
    return sampler_timesteps(num_steps, alphas_cumprod, spacing)


unipc_timesteps = dpmpp_2m_timesteps


# --------------------------------------------------------------------------------------------- tables


class MultistepTables(NamedTuple):
    """Per-step constants in sampling order; every field is float64 [S, ...] except `timesteps` (int32 [S]).

    Step i evaluates D_i = D(x_i, t_i), optionally corrects x_i, then predicts x_{i+1}:
        x_i  ← cx·x_{i−1} + c0·D_i + c1·D_{i−1} + c2·D_{i−2}   (corrector, where `correct` is 1; x_{i−1} corrected)
        x_{i+1} = px·x_i + p0·D_i + p1·D_{i−1}                  (predictor)
    D_i is taken at the uncorrected x_i (UniPC reuses that call). The last predictor row is (0, 1, 0): the
    output is D_{S−1}.
    """

    timesteps: np.ndarray
    alpha: np.ndarray  # √ᾱ_t
    sigma: np.ndarray  # √(1−ᾱ_t)
    predictor: np.ndarray  # [S, 3]: px, p0, p1
    corrector: np.ndarray  # [S, 4]: cx, c0, c1, c2
    correct: np.ndarray  # [S]


def _phi_b(hh: float, order: int) -> list[float]:
    """UniPC's b_k = k!·hh·φ_{k+1}(hh)/B(hh), k = 1…order, with B(hh) = e^{hh} − 1 ("bh2"), hh = −h.

    φ_1(x) = (e^x − 1)/x, φ_{k+1}(x) = (φ_k(x) − 1/k!)/x; float64 keeps the cancellation harmless for the
    step sizes a 1000-step grid allows (|hh| ≳ 1e-3).
    """
    b_h = math.expm1(hh)
    out, h_phi_k, fact = [], math.expm1(hh) / hh - 1.0, 1.0
    for k in range(1, order + 1):
        out.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return out


def grid_alphas(alphas_cumprod: np.ndarray, timesteps) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps int64 [S], ᾱ at them float64 [S]) after checking the grid every ODE/multistep sampler needs:
    non-empty, strictly descending, inside the table, ᾱ < 1 everywhere and ᾱ > 0 except at the first step."""
    ac = np.asarray(alphas_cumprod, np.float64)
    ts = np.asarray(timesteps, np.int64)
    if ts.ndim != 1 or len(ts) == 0 or np.any(np.diff(ts) >= 0):
        raise ValueError(f"timesteps must be a non-empty strictly descending 1-D array, got {ts}")
    if ts[0] >= len(ac) or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {len(ac)}), got {ts[0]}…{ts[-1]}")
    a = ac[ts]
    if np.any(a[1:] <= 0) or np.any(a >= 1):
        raise ValueError("only the first timestep may have alpha_cumprod = 0, and none may have 1")
    return ts, a


def multistep_tables(alphas_cumprod: np.ndarray, timesteps: np.ndarray, method: str = "dpmpp_2m") -> MultistepTables:
    """Coefficient tables for `multistep_sample` on the given descending timesteps.

    method: "ddim" (first order, = DDIM η=0), "dpmpp_2m" (DPM-Solver++(2M)) or "unipc" (UniPC-bh2: the
    DPM-Solver++(2M) predictor plus the UniC corrector, order 3 from the third step, with no extra network call).
    """
    if method not in ("ddim", "dpmpp_2m", "unipc"):
        raise ValueError(f"unknown method {method!r}")
    ts, a = grid_alphas(alphas_cumprod, timesteps)
    alpha, sigma = np.sqrt(a), np.sqrt(1.0 - a)
    lam = _log_snr(a)
    S = len(ts)
    order = {"ddim": 1, "dpmpp_2m": 2, "unipc": 2}[method]

    pred = np.zeros((S, 3))
    corr = np.zeros((S, 4))
    correct = np.zeros(S)
    h = np.diff(lam)  # h[i] = λ_{i+1} − λ_i, the step from t_i to t_{i+1}
    pred_order = np.zeros(S, np.int64)
    for i in range(S - 1):
        # e^{−h}·… written with α, σ directly so that α_i = 0 (λ_i = −∞) needs no special case.
        ratio = sigma[i + 1] / sigma[i]
        one_m = alpha[i + 1] - ratio * alpha[i]  # α_{i+1}·(1 − e^{−h})
        p = min(order, i + 1)
        pred_order[i] = p
        if p == 1:
            pred[i] = (ratio, one_m, 0.0)
        else:
            r = (lam[i] - lam[i - 1]) / h[i]  # h_{i−1}/h_i (∞ after a step from λ = −∞ → first order)
            k = 0.5 / r
            pred[i] = (ratio, one_m * (1.0 + k), -one_m * k)
    pred[S - 1] = (0.0, 1.0, 0.0)  # σ → 0: the output is the last data prediction
    pred_order[S - 1] = 1

    if method == "unipc":
        for i in range(1, S):
            # UniC at t_i redoes the step t_{i−1} → t_i with D_i (taken at the predicted x_i) added, at the
            # order of the predictor that produced x_i, plus one.
            p = pred_order[i - 1]
            hh = -h[i - 1]
            ratio = sigma[i] / sigma[i - 1]
            b_h = math.expm1(hh)  # e^{−h} − 1 ("bh2": B(h) is the first-order step's own factor)
            g = -alpha[i] * b_h  # α_i·(1 − e^{−h})
            r1 = (lam[i - 2] - lam[i - 1]) / h[i - 1] if p > 1 else -np.inf  # h_{i−2}/h_{i−1}, negated
            if not np.isfinite(r1):  # first order before, or a step from λ = −∞: the order-1 corrector
                p = 1
                rho_t, rho_1 = 0.5, 0.0  # UniC-1's ρ (as the authors' implementation)
            else:
                b = _phi_b(hh, 2)
                rho_1, rho_t = np.linalg.solve(np.array([[1.0, 1.0], [r1, 1.0]]), np.array(b))
            # x_i = ratio·x_{i−1} + g·[D_{i−1} + ρ_1·(D_{i−2} − D_{i−1})/r1 + ρ_t·(D_i − D_{i−1})]
            c0 = g * rho_t
            c2 = g * rho_1 / r1 if p > 1 else 0.0
            c1 = g - c0 - c2
            corr[i] = (ratio, c0, c1, c2)
            correct[i] = 1.0
        correct[S - 1] = 0.0  # its correction would only feed the final σ → 0 step, which ignores x

    return MultistepTables(ts.astype(np.int32), alpha, sigma, pred, corr, correct)


# --------------------------------------------------------------------------------------------- sampling


def multistep_sample(denoise: Denoiser, x_T: jax.Array, tables: MultistepTables) -> jax.Array:
    """Run a multistep sampler from x_T ([B, ...], the state at tables.timesteps[0]) to x̂₀ (same shape/dtype).

    One `lax.scan` over the S network calls; the coefficients are constants baked into the program.
    """
    batch = x_T.shape[0]
    dtype = x_T.dtype
    state = jnp.promote_types(dtype, jnp.float32)  # float32, or float64 under jax_enable_x64 with f64 input
    x0 = x_T.astype(state)
    zeros = jnp.zeros_like(x0)
    use_corrector = bool(np.any(np.asarray(tables.correct)))

    def step(carry, inputs):
        x_prev, x, d1, d2 = carry  # x_prev: corrected state at the previous t (UniC's base)
        t, a, s, pc, cc, do_corr = inputs
        v = denoise(x.astype(dtype), jnp.full((batch,), t, jnp.int32)).astype(state)
        d0 = a * x - s * v  # data prediction x̂₀ = α·x_t − σ·v
        if use_corrector:  # static: DDIM / DPM-Solver++ tables skip it entirely
            x_c = cc[0] * x_prev + cc[1] * d0 + cc[2] * d1 + cc[3] * d2
            x = jnp.where(do_corr > 0, x_c, x)
        x_next = pc[0] * x + pc[1] * d0 + pc[2] * d1
        return (x, x_next, d0, d1), None

    xs = (jnp.asarray(tables.timesteps, jnp.int32),) + tuple(jnp.asarray(f, state) for f in tables[1:])
    (_, out, _, _), _ = jax.lax.scan(step, (x0, x0, zeros, zeros), xs)
    return out.astype(dtype)


def dpmpp_2m_sample(denoise: Denoiser, x_T: jax.Array, alphas_cumprod: np.ndarray, num_steps: int,
                    spacing: str = "logsnr") -> jax.Array:
    """DPM-Solver++(2M) (Lu et al. 2022; multistep, second order, data prediction) for a v-prediction model.

    denoise: `(x_t [B, ...], t [B] int32) -> v`; x_T: the start latent [B, ...] (standard normal), used as the
    state at the first timestep; alphas_cumprod: ᾱ (float64 [T]); num_steps: network calls (S ≥ 1).
    Deterministic. Returns x̂₀ [B, ...] in x_T's dtype: the data prediction of the last call (t = 1), i.e. the
    σ → 0 end of the ODE (see the module docstring). Grid per `sampler_timesteps(num_steps, ᾱ, spacing)`.
    """
    ts = sampler_timesteps(num_steps, alphas_cumprod, spacing)
    return multistep_sample(denoise, x_T, multistep_tables(alphas_cumprod, ts, "dpmpp_2m"))


def unipc_sample(denoise: Denoiser, x_T: jax.Array, alphas_cumprod: np.ndarray, num_steps: int,
                 spacing: str = "logsnr") -> jax.Array:
    """UniPC (Zhao et al. 2023; bh2, data prediction): DPM-Solver++(2M) plus the UniC corrector.

    Same arguments, result and conventions as `dpmpp_2m_sample`, and the same number of network calls: the
    corrector reuses the call the next prediction needs anyway.
    """
    ts = sampler_timesteps(num_steps, alphas_cumprod, spacing)
    return multistep_sample(denoise, x_T, multistep_tables(alphas_cumprod, ts, "unipc"))


def _multistep_spec(method: str) -> SamplerSpec:
    def run(v, x_T, ac, num_steps, eta, noise):
        return multistep_sample(v, x_T, multistep_tables(ac, sampler_timesteps(num_steps, ac), method))

    return SamplerSpec(method, timesteps=lambda ac, n: sampler_timesteps(n, ac), noise_steps=lambda n, T: int(n),
                       run=run)


DPMPP_2M = _multistep_spec("dpmpp_2m")  # DPM-Solver++(2M): best at ≤ 15 steps
UNIPC = _multistep_spec("unipc")  # UniPC (bh2): best at ≥ 20 steps
