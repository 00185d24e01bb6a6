"""Stage vae: the mel VAE (AutoencoderKL) with AudioLDM's L1 + KL + PatchGAN objective (docs/design.md §VAE training).

  python train.py --config=audiosr_jax/configs/vae.py:full --workdir=runs/vae \
      --config.data.dataset_dir=out/tfds/audio_segments/seg10240ms_pad_mix/1.0.0

Presets: full (the released VAE; Adam(8e-6, betas 0.5/0.9) for the AE and the discriminator, GAN term from
step 50,001, 5.12 s crops), tiny (CPU demo/tests: tiny widths, 0.32 s crops, GAN from step 0).
The LDM stage then reads the trained VAE with --config.ldm.vae_from=runs/vae.
Fine-tune the released VAE with --config.train.init_from=CONVERTED_DIR.
"""

import ml_collections

from audiosr_jax.configs.common import base


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
    c = base("vae", preset)
    c.data.lowpass = "none"  # the VAE trains on the full-band mel only
    c.train.update(total_steps=485_000, batch_size=16)  # the release path says ~485k steps; batch 4/GPU there
    c.vae = ml_collections.ConfigDict(dict(
        kl_weight=1.0,          # the released path says "kl_1"; AudioLDM 16 kHz used 1000
        adversarial=True,       # PatchGAN hinge term (False: L1 + KL only, the discriminator is never updated)
        disc_start=50_001,      # taming adopt_weight: GAN term and D updates from this step on
        disc_weight=0.5,        # times the adaptive weight ||grad nll|| / (||grad g|| + 1e-4)
        disc_factor=1.0,
        logvar_init=0.0,        # the learned scalar log-variance of the NLL (param group "loss")
        disc=dict(ndf=64, n_layers=3, norm_groups=32),
    ))
    adam = dict(optimizer="adam", lr=8e-6, b1=0.5, b2=0.9, eps=1e-8, weight_decay=0.0, warmup_steps=0,
                schedule="constant", clip_norm=None)
    c.optim = ml_collections.ConfigDict(dict(vae=dict(adam), discriminator=dict(adam)))
    # The NLL's logvar is trained with the AE's optimizer settings: the same ConfigDict, so overriding
    # --config.optim.vae.lr changes both.
    c.optim.loss = c.optim.vae
    if preset != "full":
        c.train.update(total_steps=300, batch_size=2, log_every=10, eval_every=100, eval_batches=2,
                       eval_batch_size=2, save_every=50)
        c.data.crop_samples = 15_360  # 0.32 s: 32 mel frames, the shortest the 3-layer PatchGAN takes
        c.vae.disc_start = 0
        c.vae.disc.update(ndf=8, norm_groups=4)  # PatchDiscriminator.tiny()
        c.optim.vae.lr = 1e-3
        c.optim.discriminator.lr = 1e-3
    return c
