"""Stage distill: a few-step student from a teacher UNet by progressive distillation with the teacher's
classifier-free guidance baked in (audiosr_jax/training/distill.py, audiosr_jax/diffusion/progressive.py).

  python train.py --config=audiosr_jax/configs/distill.py:full --workdir=runs/distill \
      --config.distill.teacher=runs/ldm --config.data.dataset_dir=out/tfds/audio_segments/seg10240ms_pad_mix/1.0.0

``distill.teacher``: an ldm training workdir (EMA weights, its scale factor, schedule and VAE source) or an
inference checkpoint directory (converted or exported; its own VAE). ``ldm.vae_from`` / ``ldm.scale_factor``
override the teacher's. The run goes through R = log2(teacher_steps / student_steps) rounds of
``steps_per_round`` steps each (total_steps defaults to R · steps_per_round; set it again if you change those).

Presets: full (the released UNet; 512 → 4 steps in 7 rounds of 5000 steps, Adam 2e-5 without weight decay,
batch 16 of 5.12 s crops), tiny (CPU demo/tests: 64 → 4 steps, 4 rounds of 50 steps).
"""

import ml_collections

from audiosr_jax.configs.common import base
from audiosr_jax.diffusion.progressive import num_rounds


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
    c = base("distill", preset)
    c.distill = ml_collections.ConfigDict(dict(
        teacher="",            # ldm workdir or inference checkpoint dir (read-only)
        teacher_steps=512,     # the teacher's DDIM grid (≤ num_timesteps − 1); round 0 distils it with guidance
        student_steps=4,       # the target; teacher_steps / student_steps must be a power of two
        steps_per_round=5000,  # each round halves the steps
        guidance=3.5,          # the teacher's CFG scale baked into the student (sample the student at 1.0)
        ema_decay=0.9999,      # restarted from the student at every round
    ))
    c.ldm = ml_collections.ConfigDict(dict(
        vae_from="",           # "" = the teacher's VAE (a checkpoint dir's own, a workdir's ldm.vae_from)
        scale_factor=0.0,      # 0 = the teacher's
    ))
    # distillation fine-tunes a trained network: a small lr, no decay towards zero
    c.optim = ml_collections.ConfigDict(dict(lr=2e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                             warmup_steps=500, schedule="constant", clip_norm=1.0))
    c.train.update(save_every=1000)
    if preset != "full":
        c.distill.update(teacher_steps=64, student_steps=4, steps_per_round=50, ema_decay=0.999)
        c.train.update(batch_size=8, log_every=10, eval_every=100, eval_batches=2, eval_batch_size=8, save_every=50)
        c.data.crop_samples = 61_440  # 1.28 s: 128 mel frames, 16 latent frames
        c.optim.update(lr=1e-4, warmup_steps=10)
    c.train.total_steps = num_rounds(c.distill.teacher_steps, c.distill.student_steps) * c.distill.steps_per_round
    return c
