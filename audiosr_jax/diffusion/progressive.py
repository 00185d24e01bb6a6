"""Progressive distillation maths (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion
models"), with the teacher's classifier-free guidance distilled in (Meng et al. 2023, "On distillation of guided
diffusion models", stage one at a fixed guidance scale). Pure functions; the training stage is
:mod:`audiosr_jax.training.distill`.

Why this method for AudioSR: it is defined for exactly this setting (v-prediction, a cosine schedule, deterministic
DDIM); the student is the same UNet sampled by the same deterministic DDIM (:func:`samplers.ddim_sample`) on a
coarser grid, so no new sampler and no discriminator; its regression targets are deterministic functions of
(x₀, ε, t); and baking the teacher's guidance w into the student drops the unconditional branch (half the
network calls per step on top of the fewer steps).

**Grids.** On the training grid t ∈ {0 … T−1}, the N-step grid is

    t_k = round(k·(T−1)/N),  k = 0 … N   (round half up, in integer arithmetic: ⌊(2k(T−1) + N) / 2N⌋)

ascending, from t_0 = 0 to t_N = T−1. Since k/N = (k·m)/(N·m) exactly, grid(N) is the every-m-th point of
grid(N·m): every grid is a subset of any grid whose size it divides, in particular of the teacher's 2N grid
(t_k of grid(N) is t_{2k} of grid(2N)). N ≤ T−1 keeps the points distinct. Sampling N steps runs DDIM from
x_T ~ N(0, I) at t_N = T−1 (ᾱ = 0 exactly on AudioSR's zero-terminal-SNR schedule: pure noise is the right start,
unlike the reference's grid, which starts at t = 1 + (S−1)⌊T/S⌋) down to t_0 = 0, whose z is the output, as the
reference's last DDIM step lands on ᾱ_0 (:func:`grid_ddim_tables`).

**Target.** For a data point x₀ and ε, a student grid index i ∈ {1 … N}, t = t_i, t'' = t_{i−1} (student grid)
and t' the teacher grid's midpoint t_{2i−1} of grid(2N): z_t = α_t·x₀ + σ_t·ε (α = √ᾱ, σ = √(1−ᾱ)); the teacher
takes two deterministic DDIM steps t → t' → t'' (:func:`ddim_step`), landing on z_t''. The student's target is the
x̃₀ for which *one* DDIM step t → t'' lands there:

    x̃₀ = (z_t'' − (σ_t''/σ_t)·z_t) / (α_t'' − (σ_t''/σ_t)·α_t)                     (:func:`distillation_target`)

(a DDIM step is z_t'' = α_t''·x̂₀ + σ_t''·(z_t − α_t·x̂₀)/σ_t, solved for x̂₀). σ_t > 0 for every t ≥ t_1 > 0 and
the denominator is > 0 whenever ᾱ_t'' > ᾱ_t; at t = T−1 (α_t = 0, σ_t = 1) it is simply (z_t'' − σ_t''·z_t)/α_t''.
The student's v-output is trained in x₀-space, x̂₀ = α_t·z_t − σ_t·v̂, with the truncated-SNR weight
max(SNR_t, 1), SNR = α²/σ² (the paper's choice: = max(‖x₀ − x̂₀‖², ‖ε − ε̂‖²); finite at SNR = 0).

**Rounds.** Distilling a ``teacher_steps``-step teacher into a ``student_steps``-step student takes
R = log2(teacher_steps / student_steps) rounds; round r distils grid(teacher_steps/2^r) into
grid(teacher_steps/2^(r+1)). Training step s (0-based) is in round min(s // steps_per_round, R − 1), so the round is
a function of the step (a resumed run lands in the right one); steps past R·steps_per_round keep training the last
round's student.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from audiosr_jax.diffusion.sampler_spec import SamplerSpec
from audiosr_jax.diffusion.samplers import DDIMTables, ddim_sample

__all__ = ["step_grid", "check_schedule", "num_rounds", "round_at", "rounds_done", "grid_sizes", "student_steps_at",
           "ddim_step", "distillation_target", "x0_from_v", "v_from_x0", "truncated_snr_weight", "grid_ddim_tables",
           "DDIM_PROGRESSIVE"]


def step_grid(num_steps: int, num_timesteps: int = 1000) -> np.ndarray:
    """The N-step grid t_k = round(k·(T−1)/N), k = 0 … N: int64 [N + 1], ascending, t_0 = 0, t_N = T−1.

    Exact integer rounding (half up), so grid(N) ⊂ grid(N·m) holds exactly for every m. ValueError unless
    1 ≤ N ≤ T−1 (beyond that two grid points would coincide and a DDIM step between them is undefined)."""
    n, big_t = int(num_steps), int(num_timesteps)
    if n != num_steps or not 1 <= n <= big_t - 1:
        raise ValueError(f"a distillation grid needs 1 <= steps <= T-1 = {big_t - 1}, got {num_steps}")
    k = np.arange(n + 1, dtype=np.int64)
    return (2 * k * (big_t - 1) + n) // (2 * n)


def check_schedule(teacher_steps: int, student_steps: int, num_timesteps: int) -> int:
    """Validate a distillation schedule and return its number of rounds R: teacher_steps / student_steps must be a
    power of two ≥ 2 and the teacher's grid must fit T (ValueError naming the problem)."""
    if int(student_steps) != student_steps or student_steps < 1:
        raise ValueError(f"distill.student_steps must be a positive integer, got {student_steps}")
    ratio = teacher_steps / student_steps
    if int(teacher_steps) != teacher_steps or ratio != int(ratio) or ratio < 2 or int(ratio) & (int(ratio) - 1):
        raise ValueError(f"distill.teacher_steps / distill.student_steps must be a power of two >= 2, got "
                         f"{teacher_steps} / {student_steps}")
    step_grid(int(teacher_steps), num_timesteps)  # raises if the teacher's grid does not fit T
    return int(math.log2(int(ratio)))


def num_rounds(teacher_steps: int, student_steps: int) -> int:
    """R = log2(teacher_steps / student_steps) (the ratio must be a power of two: see :func:`check_schedule`)."""
    return int(round(math.log2(teacher_steps / student_steps)))


def round_at(step, steps_per_round: int, rounds: int):
    """Round of training step ``step`` (0-based; int or int array): min(step // steps_per_round, rounds − 1)."""
    if isinstance(step, (int, np.integer)):
        return min(int(step) // steps_per_round, rounds - 1)
    return jnp.minimum(step // steps_per_round, rounds - 1)


def rounds_done(step: int, steps_per_round: int, rounds: int) -> int:
    """Rounds completed after ``step`` training steps: min(step // steps_per_round, rounds)."""
    return min(int(step) // steps_per_round, rounds)


def grid_sizes(round_index: int, teacher_steps: int) -> tuple[int, int]:
    """(teacher grid size, student grid size) of round r: (teacher_steps / 2^r, teacher_steps / 2^(r+1))."""
    return teacher_steps >> round_index, teacher_steps >> (round_index + 1)


def student_steps_at(step: int, teacher_steps: int, student_steps: int, steps_per_round: int) -> int:
    """Sampling steps of the student saved after ``step`` training steps: the grid of the round its last step
    trained (a run stopped mid-round has a partly trained student of that round's size); ``teacher_steps`` at
    step 0 (the student is still the teacher's copy, but it has not learnt the guidance yet: sample it guided)."""
    if step <= 0:
        return int(teacher_steps)
    rounds = num_rounds(teacher_steps, student_steps)
    return grid_sizes(round_at(int(step) - 1, steps_per_round, rounds), int(teacher_steps))[1]


def x0_from_v(z, v, alpha, sigma):
    """x̂₀ = α·z − σ·v (any broadcastable shapes)."""
    return alpha * z - sigma * v


def v_from_x0(z, x0, alpha, sigma):
    """The v for which :func:`x0_from_v` gives ``x0`` at z: v = (α·z − x₀)/σ (σ > 0)."""
    return (alpha * z - x0) / sigma


def ddim_step(z, v, alpha, sigma, alpha_next, sigma_next):
    """One deterministic DDIM step (η = 0) from z_t with the network's v̂ to the next timestep:
    z_next = α_next·x̂₀ + σ_next·ε̂, x̂₀ = α·z − σ·v, ε̂ = σ·z + α·v (what :func:`samplers.ddim_sample` does
    at η = 0). z, v: [B, ...]; the α/σ: broadcastable to it (e.g. [B, 1, 1, 1])."""
    x0 = alpha * z - sigma * v
    eps = sigma * z + alpha * v
    return alpha_next * x0 + sigma_next * eps


def distillation_target(z_t, z_next, alpha, sigma, alpha_next, sigma_next):
    """x̃₀ = (z_next − (σ_next/σ)·z_t) / (α_next − (σ_next/σ)·α): the x₀ that one DDIM step t → next from z_t
    must predict to land on ``z_next`` (the teacher's two-step result). Shapes as :func:`ddim_step`; σ > 0 and
    ᾱ_next > ᾱ (always so for next < t on a strictly decreasing schedule)."""
    ratio = sigma_next / sigma
    return (z_next - ratio * z_t) / (alpha_next - ratio * alpha)


def truncated_snr_weight(alpha, sigma):
    """max(SNR, 1) with SNR = α²/σ²: the x₀-space loss weight of Salimans & Ho (σ > 0)."""
    return jnp.maximum(jnp.square(alpha) / jnp.square(sigma), 1.0)


def grid_ddim_tables(alphas_cumprod: np.ndarray, num_steps: int) -> DDIMTables:
    """Deterministic DDIM tables (η = 0) for sampling ``num_steps`` steps on :func:`step_grid` with
    :func:`samplers.ddim_sample`: evaluated at t_N = T−1 … t_1 (descending), each stepping to the next lower
    grid point; the last lands on t_0 = 0 (ᾱ_0, as the reference's last step). ``alphas_cumprod``: float64 [T]."""
    ac = np.asarray(alphas_cumprod, np.float64)
    grid = step_grid(num_steps, len(ac))
    ts, prev = grid[1:][::-1], grid[:-1][::-1]
    return DDIMTables(ts.astype(np.int32), np.sqrt(ac[ts]).astype(np.float32),
                      np.sqrt(1.0 - ac[ts]).astype(np.float32), ac[prev].astype(np.float32),
                      np.zeros(len(ts), np.float32))


def _run_grid_ddim(v, x_T, ac, num_steps, eta, noise):
    """Deterministic DDIM on :func:`step_grid` (eta and noise are ignored, as the ODE samplers do)."""
    tables = grid_ddim_tables(ac, num_steps)
    return ddim_sample(v, x_T, jnp.zeros((len(tables.timesteps),) + x_T.shape, x_T.dtype), tables)


# A distilled student's sampler: the same DDIM update as the reference's (η = 0), on the distillation grid (from
# t = T−1 down to t = 0). Not in `sampling.REGISTRY` yet: one line there makes it a --sampler choice.
DDIM_PROGRESSIVE = SamplerSpec("ddim_progressive", timesteps=lambda ac, n: step_grid(n, len(ac))[1:][::-1],
                               noise_steps=lambda n, T: int(n), run=_run_grid_ddim)
