"""Stage vocoder: the 48 kHz HiFi-GAN generator with MPD + MSD + MRD discriminators
(docs/design.md §Vocoder training).

  python train.py --config=audiosr_jax/configs/vocoder.py:full --workdir=runs/vocoder \
      --config.data.dataset_dir=out/tfds/audio_segments/seg10240ms_pad_mix/1.0.0

Presets: full (the released generator; AdamW(2e-4, betas 0.8/0.99) × 0.999 every `decay_every` steps,
global batch 128 of 0.32 s crops as AudioSR's vocoder config), tiny (CPU demo/tests: tiny widths, 1/16-width
discriminators, 0.16 s crops). Fine-tune the released vocoder with --config.train.init_from=CONVERTED_DIR.
Any mesh works, the MSD's grouped convs with tensor > 1 included (the loop pins their batch sharding, see
audiosr_jax/sharding.py).
"""

import ml_collections

from audiosr_jax.configs.common import base


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
    c = base("vocoder", preset)
    c.data.lowpass = "none"
    c.data.crop_samples = 15_360  # HiFi-GAN segment_size (0.32 s, 32 frames)
    c.train.update(total_steps=1_000_000, batch_size=128)  # AudioSR: batch_size 128 over 8 GPUs
    c.vocoder_train = ml_collections.ConfigDict(dict(
        lambda_fm=2.0, lambda_mel=45.0,
        normalize=False,  # True: remove the mean and scale each crop to peak 0.5 (as the VAE/LDM stages)
        disc=dict(kinds=["mpd", "msd", "mrd"], width_multiplier=1.0, periods=[2, 3, 5, 7, 11], scales=3,
                  resolutions=[[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]]),
    ))
    # HiFi-GAN: AdamW (torch default weight decay 0.01), lr decayed by 0.999 once per epoch; one "epoch" is
    # decay_every steps here (set it to dataset examples / batch size). AudioSR's config lists lr 1e-4.
    adamw = dict(optimizer="adam", lr=2e-4, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.01, warmup_steps=0,
                 schedule="exponential", decay_every=1000, decay_rate=0.999, clip_norm=None)
    c.optim = ml_collections.ConfigDict(dict(generator=dict(adamw), discriminator=dict(adamw)))
    if preset != "full":
        c.train.update(total_steps=300, batch_size=2, log_every=10, eval_every=100, eval_batches=2,
                       eval_batch_size=2, save_every=50)
        c.data.crop_samples = 7_680  # 0.16 s, 16 frames (the MRD's 2048-point STFT needs > 1024 samples)
        c.vocoder_train.disc.width_multiplier = 1 / 16  # VocoderDiscriminator.tiny()
        c.optim.generator.update(lr=1e-3, decay_every=100)
        c.optim.discriminator.update(lr=1e-3, decay_every=100)
    return c
