"""Stage ``distill``: a fast few-step student from any teacher UNet, by progressive distillation (Salimans & Ho
2022) with the teacher's classifier-free guidance distilled in (Meng et al. 2023, stage one at a fixed scale w).

Why this method: it is defined for exactly AudioSR's setting (v-prediction, cosine schedule, deterministic DDIM);
the student is the same UNet, sampled by the same deterministic DDIM on a coarser grid (no new sampler, no
discriminator); its targets are deterministic functions of (x₀, ε, t); and baking the teacher's guidance
(w = ``distill.guidance``, 3.5 as AudioSR samples) into the student removes the unconditional branch, halving the
network calls of every step on top of halving the steps each round. The maths (grids, target, weight, rounds) is
in :mod:`audiosr_jax.diffusion.progressive`.

Per example: the frozen VAE's scaled target latent x₀ and condition latent (exactly as the LDM stage,
:mod:`audiosr_jax.training.ldm`, no condition dropout: the student is always conditional); the round r =
min(step // steps_per_round, R − 1); a student grid index i ~ U{1 … N_r} of grid(N_r), N_r = teacher_steps/2^(r+1);
z_t = α_t·x₀ + σ_t·ε; the teacher's two DDIM steps t → t' → t'' on grid(2N_r); the target x̃₀; the loss
max(SNR_t, 1)·mean((x̂₀ − x̃₀)²) with the student's x̂₀ = α_t·z_t − σ_t·v̂. Round 0's teacher is the given teacher
under guidance (v_u + w·(v_c − v_u), one doubled-batch call, :func:`samplers.classifier_free_guidance`); round r > 0's
is the student at the end of round r − 1, conditional only (it has the guidance baked in).

State: params {"unet": the student, "teacher": the current round's teacher} (only "unet" is trained, has an
optimizer and an EMA; "teacher" is checkpointed with the state, so a run resumed mid-round uses the same teacher).
At step 0 the student, its EMA and the teacher slot are set to the frozen teacher; at the first step of round
r > 0 the teacher slot becomes the student and the EMA restarts from it (so the exported EMA never averages in
the previous round's student, which samples on another grid). The optimizer state carries on across rounds.

Frozen: {"vae": the VAE (``ldm.vae_from``, else the teacher's: a converted teacher's own VAE, a workdir
teacher's ``ldm.vae_from``), "teacher": the teacher UNet's params (EMA of a workdir), "scale_factor": the
teacher's latent scale (``ldm.scale_factor`` overrides)}.

``distill.teacher``: an LDM-stage workdir (its latest checkpoint; EMA weights, its saved ``ldm`` settings), a
distill-stage workdir (a student distilled further; its guidance is already baked in, so set
``distill.guidance=1``), or an inference checkpoint directory (``architecture.json``: converted or exported).
The teacher must be a "diffusion"-objective v-prediction model.

The saved config records what export needs: ``ldm`` = the teacher's diffusion settings, the scale factor and the
VAE source (as an LDM run's), and ``sampling`` = {"sampler": "ddim_progressive" (deterministic DDIM on the
distillation grid, :data:`progressive.DDIM_PROGRESSIVE`), "steps": distill.student_steps, "eta": 0, "guidance": 1}
in the format of architecture.json's "sampling" (the final student's; a run stopped earlier holds the student of
``progressive.student_steps_at(step, ...)`` steps).

Shapes: batch "audio" [B, N] float32 48 kHz (N as the LDM stage); latents [B, N/3840, 32, C].
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from audiosr_jax import audio, paths
from audiosr_jax.diffusion import progressive as pd
from audiosr_jax.diffusion.config import DiffusionConfig
from audiosr_jax.diffusion.samplers import classifier_free_guidance
from audiosr_jax.errors import CheckpointError, UserError
from audiosr_jax.inference.pipeline import UNCONDITIONAL_LATENT
from audiosr_jax.models.unet import UNetConfig, UNetModel
from audiosr_jax.models.vae import AutoencoderKL, VAEConfig, posterior_sample
from audiosr_jax.training import state as st
from audiosr_jax.training.ldm import pair_log_mels
from audiosr_jax.training.stages import Stage
from audiosr_jax.training.weights import (
    architectures,
    check_architecture,
    load_group,
    read_trained_params,
)

log = logging.getLogger(__name__)

# the stages whose workdirs hold a "unet" group and an ``ldm`` section (scale factor, diffusion settings)
TEACHER_STAGES = ("ldm", "distill")


def read_teacher(path: str) -> tuple[dict, dict]:
    """(teacher UNet params as host numpy, info) from ``path``: an inference checkpoint directory
    (``architecture.json``) or an ldm / distill training workdir (its latest checkpoint, EMA if kept).

    info: {"architecture": the UNet's dict, "scale_factor": float or None, "diffusion": DiffusionConfig,
    "vae_from": where its VAE is ("" if unknown), "stage": the workdir's stage or "checkpoint",
    "vae_params", "vae_architecture": the checkpoint's VAE params and architecture dict (checkpoint directories
    only, else None)}."""
    root = paths.resolve(path)
    if not root.exists():
        raise CheckpointError(f"{path}: no such teacher (distill.teacher)")
    if (root / "architecture.json").exists():
        from audiosr_jax.inference.checkpoint import load_weights

        arch = json.loads((root / "architecture.json").read_text())
        w = load_weights(str(root))
        host = jax.tree.map(np.asarray, w.params)
        return host["unet"], {"architecture": arch.get("unet"), "scale_factor": float(w.scale_factor),
                              "diffusion": w.diffusion, "vae_from": str(path), "stage": "checkpoint",
                              "vae_params": host["vae"], "vae_architecture": arch.get("vae")}
    params, cfg = read_trained_params(path, "unet")
    if cfg.get("stage") not in TEACHER_STAGES:
        raise CheckpointError(f"{path}: a workdir of stage {cfg.get('stage')}; distill.teacher needs one of stage "
                              f"{' or '.join(TEACHER_STAGES)}, or an inference checkpoint directory")
    ldm = cfg.get("ldm") or {}
    try:
        diffusion = DiffusionConfig.from_ldm_config(ldm)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid diffusion settings in its config: {e}") from None
    return params, {"architecture": (cfg.get("model") or {}).get("unet"), "scale_factor": ldm.get("scale_factor"),
                    "diffusion": diffusion, "vae_from": ldm.get("vae_from") or "", "stage": cfg.get("stage"),
                    "vae_params": None, "vae_architecture": None}


class DistillStage(Stage):
    """The distillation stage: ``init`` -> params {"unet", "teacher"}; ``train_step`` / ``eval_step`` are pure.

    Frozen: {"vae", "teacher", "scale_factor"} (see the module docstring)."""

    name = "distill"
    groups = ("unet",)
    ema_groups = ("unet",)
    families = {"unet": "unet"}

    @classmethod
    def from_config(cls, config: Any) -> tuple["DistillStage", dict]:
        """The stage and its frozen networks: the teacher (``distill.teacher``) and the VAE (see the module
        docstring); one-line errors for a missing or unsuitable teacher, VAE or schedule."""
        d = config.distill
        if not d.teacher:
            raise CheckpointError("stage distill needs a teacher: set --config.distill.teacher=DIR (an ldm "
                                  "training workdir or an inference checkpoint directory)")
        if config.train.get("init_from", ""):
            raise UserError("stage distill starts the student from distill.teacher; leave train.init_from empty")
        vae_cfg, unet_cfg, _ = architectures(config.model)
        teacher, info = read_teacher(d.teacher)
        check_architecture(d.teacher, "unet", info["architecture"], config.model.unet.to_dict())
        diffusion = info["diffusion"]
        if diffusion.objective != "diffusion" or diffusion.parameterization != "v":
            raise UserError(f"{d.teacher}: progressive distillation needs a v-prediction diffusion teacher; this one "
                            f"is objective={diffusion.objective!r}, parameterization={diffusion.parameterization!r}")
        if info["stage"] == "distill" and float(d.guidance) != 1.0:
            log.warning("%s is a distilled student (guidance already baked in) but distill.guidance=%s: the "
                        "guidance is applied a second time", d.teacher, d.guidance)
        vae_from = config.ldm.get("vae_from", "") or info["vae_from"]
        if not vae_from:
            raise CheckpointError(f"{d.teacher}: its config does not say which VAE it was trained on; set "
                                  "--config.ldm.vae_from=DIR")
        if info["vae_params"] is not None and vae_from == info["vae_from"]:
            vae = info["vae_params"]
            check_architecture(vae_from, "vae", info["vae_architecture"], config.model.vae.to_dict())
        else:
            vae, vinfo = load_group(vae_from, "vae")
            check_architecture(vae_from, "vae", vinfo["architecture"], config.model.vae.to_dict())
        scale = float(config.ldm.get("scale_factor", 0.0) or 0.0) or float(info["scale_factor"] or 0.0)
        if not scale > 0:
            raise CheckpointError(f"{d.teacher}: no latent scale factor recorded; set --config.ldm.scale_factor")
        stage = cls(config, vae_cfg, unet_cfg, diffusion, vae_from, jnp.dtype(config.train.compute_dtype))
        # float32 like the student's params (the first step copies the teacher into them)
        teacher = jax.tree.map(lambda x: np.asarray(x, np.float32), teacher)
        frozen = {"vae": vae, "teacher": teacher, "scale_factor": np.float32(scale)}
        return stage, frozen

    def __init__(self, config: Any, vae_cfg: VAEConfig, unet_cfg: UNetConfig, diffusion: DiffusionConfig,
                 vae_from: str = "", dtype=jnp.float32):
        d = config.distill
        self.vae_cfg, self.unet_cfg, self.dtype = vae_cfg, unet_cfg, dtype
        self.vae = AutoencoderKL(vae_cfg, dtype=dtype)
        self.unet = UNetModel(unet_cfg, dtype=dtype)
        self.diffusion, self.vae_from = diffusion, vae_from
        ac = np.asarray(diffusion.alphas_cumprod(), np.float64)
        self.alpha = np.sqrt(ac).astype(np.float32)           # α_t = √ᾱ_t   [T]
        self.sigma = np.sqrt(1.0 - ac).astype(np.float32)     # σ_t = √(1−ᾱ_t) [T]
        self.teacher_steps, self.student_steps = int(d.teacher_steps), int(d.student_steps)
        try:
            self.rounds = pd.check_schedule(self.teacher_steps, self.student_steps, len(ac))
        except ValueError as e:
            raise UserError(str(e)) from None
        self.steps_per_round = int(d.steps_per_round)
        if self.steps_per_round < 1:
            raise UserError(f"distill.steps_per_round must be >= 1, got {self.steps_per_round}")
        total = int(config.train.total_steps)
        if total < self.rounds * self.steps_per_round:
            log.warning("train.total_steps=%d ends in round %d of %d (rounds x steps_per_round = %d): the student "
                        "will sample %d steps, not distill.student_steps=%d", total,
                        pd.round_at(total - 1, self.steps_per_round, self.rounds), self.rounds,
                        self.rounds * self.steps_per_round,
                        pd.student_steps_at(total, self.teacher_steps, self.student_steps, self.steps_per_round),
                        self.student_steps)
        self.guidance = float(d.guidance)
        self.ema_decay = float(d.ema_decay)
        self.grad_accum = int(config.train.get("grad_accum", 1))
        data = config.get("data") or {}
        self.stft_lowpass = str(data.get("lowpass", "host")) == "device_stft"
        # per round r: the student grid (padded with 0) and the teacher's midpoints t_{2i−1} of grid(2N_r) at the
        # same index i; [R, N_0 + 1] int32, gathered with the traced round
        width = self.teacher_steps // 2 + 1
        self.student_grid = np.zeros((self.rounds, width), np.int32)
        self.teacher_mid = np.zeros((self.rounds, width), np.int32)
        for r in range(self.rounds):
            n_teacher, n_student = pd.grid_sizes(r, self.teacher_steps)
            self.student_grid[r, : n_student + 1] = pd.step_grid(n_student, len(ac))
            self.teacher_mid[r, 1 : n_student + 1] = pd.step_grid(n_teacher, len(ac))[1::2]
        self.student_sizes = np.asarray([pd.grid_sizes(r, self.teacher_steps)[1] for r in range(self.rounds)],
                                        np.int32)

    def prepare(self, frozen: dict, batch: dict, key: jax.Array, saved_config: dict | None) -> tuple[dict, dict]:
        """Record in the saved config what export and sampling need: the teacher's diffusion settings, scale and
        VAE source (as an LDM run's ``ldm`` section) and the final student's sampler."""
        ldm = {**self.diffusion.to_dict(), "scale_factor": float(frozen["scale_factor"]), "vae_from": self.vae_from}
        # architecture.json's "sampling" keys (`inference.checkpoint.sampling_defaults`); "ddim_progressive" is the
        # DDIM update on the distillation grid (the reference "ddim" grid would miss the student's timesteps)
        sampling = {"sampler": pd.DDIM_PROGRESSIVE.name, "steps": self.student_steps, "eta": 0.0, "guidance": 1.0}
        return {}, {"ldm": ldm, "sampling": sampling, "distill": {"rounds": self.rounds}}

    @classmethod
    def exported_sampling(cls, saved_config: dict, step: int) -> dict:
        """architecture.json's "sampling" for the student a checkpoint of ``step`` holds: the saved ``sampling``
        with the steps of the round its last step trained (``progressive.student_steps_at``: fewer rounds done,
        more steps); {} at step 0 (nothing distilled yet: the teacher's own defaults apply)."""
        sampling, d = dict(saved_config.get("sampling") or {}), saved_config.get("distill") or {}
        if not sampling or step <= 0:
            return {}
        sampling["steps"] = pd.student_steps_at(int(step), int(d["teacher_steps"]), int(d["student_steps"]),
                                                int(d["steps_per_round"]))
        return sampling

    def init(self, key: jax.Array, batch_shape: tuple[int, int]) -> dict:
        """Params {"unet", "teacher"} for crops of ``batch_shape`` = (B, N samples): random placeholders of the
        right shapes (the first step copies the frozen teacher into both)."""
        f = self.vae_cfg.downsample_factor
        frames = batch_shape[1] // audio.HOP
        x = jnp.zeros((1, frames // f, 256 // f, self.unet_cfg.in_channels), jnp.float32)
        p = self.unet.init(key, x, jnp.zeros((1,), jnp.int32))["params"]
        return {"unet": p, "teacher": p}

    # ---------------------------------------------------------------------------------------------- pieces

    def round_of(self, step):
        """Round of training step ``step`` (0-based; int32 [] traced or int)."""
        return pd.round_at(step, self.steps_per_round, self.rounds)

    def latents(self, vae_params, batch: dict, key: jax.Array, scale_factor) -> tuple[jax.Array, jax.Array]:
        """(x₀ [B, T/8, 32, C] scaled target latent, cond [B, T/8, 32, C] unscaled condition latent): the LDM
        stage's (posterior samples of the frozen VAE of the normalised pair)."""
        mels = pair_log_mels(batch, self.stft_lowpass)[..., None]
        mean, logvar = self.vae.apply({"params": vae_params}, mels, method=AutoencoderKL.encode)
        z = jax.lax.stop_gradient(posterior_sample(mean, logvar, jax.random.normal(key, mean.shape)))
        b = batch["audio"].shape[0]
        return z[:b] * scale_factor, z[b:]

    def _model(self, params, scale_factor):
        """model(x [B, ...], t [B] int32, cond [B, ...] unscaled) -> v float32, as the inference pipeline calls
        the UNet (the condition scaled inside, so the guidance's constant −11.4981 latent is scaled alike)."""
        def model(x, t, cond):
            pred = self.unet.apply({"params": params}, jnp.concatenate([x, cond * scale_factor], axis=-1), t)
            return pred.astype(jnp.float32)

        return model

    def teacher_velocity(self, teacher_params, x: jax.Array, t: jax.Array, cond: jax.Array, round_index,
                         scale_factor) -> jax.Array:
        """The teacher's v [B, ...] at (x [B, T/8, 32, C], t [B] int32) given the unscaled condition latent:
        round 0 guided, v_u + w·(v_c − v_u) (one doubled-batch call, as inference); later rounds the conditional
        output only (the student already has the guidance in it)."""
        model = self._model(teacher_params, scale_factor)
        if self.guidance == 1.0:
            return model(x, t, cond)

        def guided(x, t, c):
            return classifier_free_guidance(model, c, jnp.full_like(c, UNCONDITIONAL_LATENT), self.guidance)(x, t)

        return jax.lax.cond(jnp.asarray(round_index) == 0, guided, model, x, t, cond)

    def _coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(α_t, σ_t) gathered for t [B], shaped [B, 1, 1, 1]."""
        return (jnp.asarray(self.alpha)[t][:, None, None, None], jnp.asarray(self.sigma)[t][:, None, None, None])

    def loss(self, unet_params, teacher_params, round_index, frozen, batch, key):
        """(loss, metrics) of one (micro-)batch for the student ``unet_params`` in round ``round_index``."""
        k_enc, k_i, k_eps = jax.random.split(key, 3)
        sf = frozen["scale_factor"]
        x0, cond = self.latents(frozen["vae"], batch, k_enc, sf)
        b = x0.shape[0]
        r = jnp.asarray(round_index, jnp.int32)
        n = jnp.asarray(self.student_sizes)[r]
        i = jax.random.randint(k_i, (b,), 1, n + 1)
        grid, mid = jnp.asarray(self.student_grid)[r], jnp.asarray(self.teacher_mid)[r]
        t, t_mid, t_next = grid[i], mid[i], grid[i - 1]
        (a, s), (a_m, s_m), (a_n, s_n) = (self._coefficients(u) for u in (t, t_mid, t_next))
        eps = jax.random.normal(k_eps, x0.shape)
        z_t = a * x0 + s * eps
        v1 = self.teacher_velocity(teacher_params, z_t, t, cond, r, sf)
        z_mid = pd.ddim_step(z_t, v1, a, s, a_m, s_m)
        v2 = self.teacher_velocity(teacher_params, z_mid, t_mid, cond, r, sf)
        z_next = pd.ddim_step(z_mid, v2, a_m, s_m, a_n, s_n)
        target = jax.lax.stop_gradient(pd.distillation_target(z_t, z_next, a, s, a_n, s_n))
        v_hat = self._model(unet_params, sf)(z_t, t, cond)
        x0_hat = pd.x0_from_v(z_t, v_hat, a, s)
        weight = pd.truncated_snr_weight(a, s).reshape(b)
        per_example = jnp.mean(jnp.square(x0_hat - target), axis=(1, 2, 3))
        loss = jnp.mean(weight * per_example)
        return loss, {"loss": loss, "x0_mse": jnp.mean(per_example), "latent_std": jnp.std(x0)}

    def begin_step(self, state: st.TrainState, frozen: dict) -> st.TrainState:
        """Before step ``state.step``'s update: at step 0 the student, its EMA and the teacher slot become the
        frozen teacher; at the first step of a round r > 0 the teacher slot becomes the student (the end of round
        r − 1) and the EMA restarts from it; otherwise the state as is."""
        step = state.step
        boundary = (step > 0) & (step % self.steps_per_round == 0) & (step // self.steps_per_round < self.rounds)
        which = jnp.where(step == 0, 1, jnp.where(boundary, 2, 0))

        def keep(s):
            return s

        def from_teacher(s):
            t = frozen["teacher"]
            return s.replace(params={**s.params, "unet": t, "teacher": t}, ema={**s.ema, "unet": t})

        def next_round(s):
            p = s.params["unet"]
            return s.replace(params={**s.params, "teacher": p}, ema={**s.ema, "unet": p})

        return jax.lax.switch(which, [keep, from_teacher, next_round], state)

    # ------------------------------------------------------------------------------------------ the protocol

    def train_step(self, state: st.TrainState, frozen: dict, batch: dict, txs: dict):
        """One optimizer step on the global batch (accumulated over ``train.grad_accum`` micro-batches)."""
        state = self.begin_step(state, frozen)
        r = self.round_of(state.step)
        teacher = state.params["teacher"]
        key = st.step_key(state)
        # gradients of the student only: the teacher slot is a parameter group of the state but never trained
        loss, metrics, grads = st.accumulate_grads(
            lambda p, b, k: self.loss(p, teacher, r, frozen, b, k), state.params["unet"], batch, key, self.grad_accum)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        new = st.apply_group(state, "unet", grads, txs["unet"])
        new = st.update_ema(new, self.ema_decay)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        metrics = {**metrics, "round": r.astype(jnp.float32),
                   "student_steps": jnp.asarray(self.student_sizes)[r].astype(jnp.float32)}
        return st.finish_step(state, new, finite), {**metrics, "grad_norm": grad_norm, "finite": finite}

    def eval_step(self, state: st.TrainState, frozen: dict, batch: dict, key: jax.Array) -> dict:
        """Validation distillation loss of the round the last step trained, with the trained and EMA params."""
        r = self.round_of(jnp.maximum(state.step - 1, 0))
        teacher = state.params["teacher"]
        out = {"loss": self.loss(state.params["unet"], teacher, r, frozen, batch, key)[0]}
        if state.ema:
            out["loss_ema"] = self.loss(state.ema["unet"], teacher, r, frozen, batch, key)[0]
        return out
