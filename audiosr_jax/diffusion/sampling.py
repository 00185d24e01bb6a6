"""One entry point for every sampler × parameterisation × schedule.

The samplers (`samplers.ddim_sample`, `dpm_solver.{dpmpp_2m,unipc}_sample`, `ode.{euler,heun}_sample`) take a
v-denoiser. `v_denoiser` turns a denoiser that returns the model's own prediction (ε, v or x₀) into one: it
looks √ᾱ_t up in the schedule table by t and converts with `parameterization.to_v`. The conversion is affine
in the prediction, so classifier-free guidance on the model's output and on v agree.

Where a combination is undefined, `sample` raises ValueError before anything runs: an ε-model evaluated at a
timestep with ᾱ = 0 (x₀ = (x_t − σ·ε)/√ᾱ). On zero-terminal-SNR schedules (cosine, *_zero_snr, sigmoid)
the grids avoid that point: DPM-Solver++/UniPC/Euler/Heun start at the largest t with ᾱ > 0, and the reference
DDIM grid t = k·⌊T/S⌋ + 1 reaches T − 1 only when ⌊T/S⌋ divides T − 2 (for T = 1000: S ≥ 500), so ε-models
sample fine at the usual step counts; those DDIM step counts are refused for them.
Models trained with the flow or bridge objective (`flow`) sample with `flow_samplers` instead: "euler",
"heun" and "midpoint" on the flow ODE (`check_options` says which names a model takes; "midpoint" exists
only there, hence `ALL_SAMPLERS`). The call counts agree across objectives: Euler S, Heun 2S − 1, midpoint 2S.
(The model's own ε at ᾱ ≈ 0 is still a poor x₀ estimate, amplified by 1/√ᾱ; that is the ε-parameterisation's
known weakness at zero terminal SNR, Lin et al. 2023, not a sampler matter.)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax.diffusion import flow_samplers
from audiosr_jax.diffusion import parameterization as pz
from audiosr_jax.diffusion.config import DiffusionConfig
from audiosr_jax.diffusion.dpm_solver import DPMPP_2M, UNIPC
from audiosr_jax.diffusion.ode import EULER, HEUN
from audiosr_jax.diffusion.progressive import DDIM_PROGRESSIVE
from audiosr_jax.diffusion.sampler_spec import SamplerSpec
from audiosr_jax.diffusion.samplers import DDIM

__all__ = ["REGISTRY", "SAMPLERS", "ALL_SAMPLERS", "FLOW_ONLY_SAMPLERS", "check_options", "network_timesteps",
           "num_noise_steps", "num_network_calls", "v_denoiser", "check_timesteps", "sample"]

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]

# The one list of samplers: the CLI, the configs and the engine read it. ddim: the reference's (stochastic
# with η); dpmpp_2m, unipc, euler, heun deterministic on the log-SNR grid of dpm_solver; ddim_progressive:
# DDIM η = 0 on progressive distillation's nested grid (what a distilled student was trained on).
REGISTRY: dict[str, SamplerSpec] = {s.name: s for s in (DDIM, DPMPP_2M, UNIPC, EULER, HEUN, DDIM_PROGRESSIVE)}
SAMPLERS = tuple(REGISTRY)
# samplers of flow/bridge-objective models only (`flow_samplers`); the CLI offers ALL_SAMPLERS
FLOW_ONLY_SAMPLERS = tuple(m for m in flow_samplers.METHODS if m not in REGISTRY)
ALL_SAMPLERS = SAMPLERS + FLOW_ONLY_SAMPLERS


def _spec(sampler: str) -> SamplerSpec:
    if sampler in FLOW_ONLY_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is for flow/bridge-objective models; this is a diffusion model: "
                         f"choose from {SAMPLERS}")
    if sampler not in REGISTRY:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    return REGISTRY[sampler]


def network_timesteps(sampler: str, alphas_cumprod: np.ndarray, num_steps: int) -> np.ndarray:
    """The distinct training timesteps the network is evaluated at, descending (int64)."""
    return _spec(sampler).timesteps(np.asarray(alphas_cumprod, np.float64), num_steps)


def num_noise_steps(sampler: str, num_steps: int, num_timesteps: int = 1000) -> int:
    """Length of the per-step noise axis `sample` takes: one draw per DDIM step (len(ddim_timesteps), which
    exceeds num_steps when it does not divide num_timesteps); the deterministic samplers ignore noise and
    are given num_steps (so the value also counts steps); so are the flow-only samplers."""
    if sampler in FLOW_ONLY_SAMPLERS:
        return int(num_steps)
    return _spec(sampler).noise_steps(num_steps, num_timesteps)


def num_network_calls(sampler: str, num_steps: int, num_timesteps: int = 1000) -> int:
    """Denoiser calls of one run (before guidance doubling): Heun 2·S − 1, midpoint 2·S (flow only), DDIM its
    grid length, others S. Euler and Heun make as many calls on the flow ODE as on the diffusion one."""
    if sampler in FLOW_ONLY_SAMPLERS:
        return flow_samplers.num_calls(sampler, num_steps)
    return _spec(sampler).calls(num_noise_steps(sampler, num_steps, num_timesteps))


def check_options(diffusion: DiffusionConfig, sampler: str, num_steps: int) -> None:
    """ValueError (one line) where a model trained with `diffusion` cannot sample with (sampler, num_steps):
    diffusion models take SAMPLERS (and `check_timesteps`), flow/bridge models `flow_samplers.METHODS`."""
    if diffusion.objective == "diffusion":
        check_timesteps(diffusion.parameterization, diffusion.alphas_cumprod(),
                        network_timesteps(sampler, diffusion.alphas_cumprod(), num_steps))
        return
    if sampler not in flow_samplers.METHODS:
        raise ValueError(f"sampler {sampler!r} is not available for a {diffusion.objective}-objective model "
                         f"(its eta is a diffusion setting too); choose from {flow_samplers.METHODS}")
    if int(num_steps) < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {num_steps}")


def check_timesteps(parameterization: str, alphas_cumprod: np.ndarray, timesteps) -> None:
    """ValueError where `parameterization` cannot be turned into x₀ at one of `timesteps` (ε at ᾱ = 0)."""
    pz.check_parameterization(parameterization)
    ts = np.asarray(timesteps, np.int64)
    if parameterization == "eps":
        bad = ts[np.asarray(alphas_cumprod, np.float64)[ts] <= 0]
        if len(bad):
            raise ValueError(f"an eps-prediction model cannot be evaluated at t={int(bad[0])}, where "
                             "alpha_cumprod = 0 (zero terminal SNR): x0 = (x_t - sigma*eps)/sqrt(alpha_cumprod) "
                             "is undefined; use fewer DDIM steps or another sampler")


def v_denoiser(denoise: Denoiser, parameterization: str, alphas_cumprod: np.ndarray) -> Denoiser:
    """A v-denoiser from `denoise(x_t, t) -> the model's own prediction`; `denoise` itself for "v".

    The √ᾱ_t / √(1−ᾱ_t) look-up is a float32 table computed in float64 (as the samplers' own tables).
    """
    pz.check_parameterization(parameterization)
    if parameterization == "v":
        return denoise
    ac = np.asarray(alphas_cumprod, np.float64)
    sqrt_a_tab, sqrt_1ma_tab = np.sqrt(ac).astype(np.float32), np.sqrt(1.0 - ac).astype(np.float32)

    def to_v(x, t):
        pred = denoise(x, t)
        shape = (-1,) + (1,) * (x.ndim - 1)
        sqrt_a = jnp.asarray(sqrt_a_tab)[t].reshape(shape)
        sqrt_1ma = jnp.asarray(sqrt_1ma_tab)[t].reshape(shape)
        xf, pf = x.astype(jnp.float32), pred.astype(jnp.float32)
        return pz.to_v(parameterization, xf, pf, sqrt_a, sqrt_1ma).astype(pred.dtype)

    return to_v


def sample(sampler: str, denoise: Denoiser, x_T: jax.Array, alphas_cumprod: np.ndarray, num_steps: int, *,
           parameterization: str = "v", eta: float = 1.0, noise: jax.Array | None = None) -> jax.Array:
    """Sample x₀ ([B, ...], x_T's dtype) from x_T with any sampler, for a model of any parameterisation.

    denoise: `(x_t [B, ...], t [B] int32) -> prediction` in the model's `parameterization`; alphas_cumprod: the
    ᾱ table the model was trained with (float64 [T]); num_steps: the sampler's step count (grid points; Heun
    makes 2·num_steps − 1 calls); eta and noise ([num_noise_steps, B, ...] standard normals; None: zeros,
    allowed only with eta = 0): DDIM only. Raises ValueError for an unknown sampler or parameterisation, a
    bad step count, or an undefined combination (see `check_timesteps`).
    """
    spec = _spec(sampler)
    ac = np.asarray(alphas_cumprod, np.float64)
    check_timesteps(parameterization, ac, spec.timesteps(ac, num_steps))
    return spec.run(v_denoiser(denoise, parameterization, ac), x_T, ac, num_steps, eta, noise)
