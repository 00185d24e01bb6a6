"""Stage ldm: the latent-diffusion UNet (docs/design.md §UNet, §LDM training).

  python train.py --config=audiosr_jax/configs/ldm.py:full --workdir=runs/ldm --config.ldm.vae_from=runs/vae \
      --config.data.dataset_dir=out/tfds/audio_segments/seg10240ms_pad_mix/1.0.0

Presets: full (the released UNet; AdamW 1e-4, 5000 warm-up steps then constant, batch 16, 5.12 s crops),
tiny (CPU demo/tests). Fine-tune the released model with --config.train.init_from=CONVERTED_DIR.
"""

import ml_collections

from audiosr_jax.configs.common import base


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
    c = base("ldm", preset)
    c.ldm = ml_collections.ConfigDict(dict(
        vae_from="",                 # converted AudioSR dir or a VAE training workdir (frozen)
        scale_factor=0.0,            # 0: the VAE dir's value, else measured as 1/std of the first batch
        schedule="cosine", schedule_kwargs={}, num_timesteps=1000,
        parameterization="v", weighting="uniform", min_snr_gamma=5.0,
        cfg_drop_prob=0.1, cfg_drop_per="batch",   # the reference drops the condition once per batch
        ema_decay=0.9999,
        mask_above_bandwidth=True,   # batches with "bandwidth_hz": the loss ignores latent rows above it
        # "diffusion" (the above schedule/parameterisation), "flow" (rectified flow from noise) or "bridge"
        # (flow from the condition latent + bridge_noise·ε): audiosr_jax/diffusion/flow.py
        objective="diffusion",
        flow_time_sampling="logit_normal", flow_logit_mean=0.0, flow_logit_std=1.0,  # training t law
        flow_time_shift=1.0,         # SD3 shift s·t/(1+(s−1)·t), at training and on the sampling grid
        bridge_noise=0.5,            # σ_b of the bridge's start point
    ))
    c.optim = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                                             warmup_steps=5000, schedule="constant", clip_norm=None))
    if preset != "full":
        c.train.update(total_steps=300, batch_size=8, log_every=10, eval_every=100, eval_batches=2,
                       eval_batch_size=8, save_every=50)
        c.data.crop_samples = 61_440  # 1.28 s: 128 mel frames, 16 latent frames
        c.optim.update(lr=5e-4, warmup_steps=20)
        c.ldm.ema_decay = 0.999
    return c
