"""Ablation: noise schedule × parameterisation (3 × 2) of the LDM, at the demo's tiny width on the offline corpus.

  python ablate.py --grid=audiosr_jax/configs/ablations/schedule_x_param.py --workdir=out/ablations/schedule_x_param

Question: does zero terminal SNR matter for super-resolution, and does ε-prediction cope with it? Schedules:
the reference's unclipped cosine (ᾱ_T = 0), LDM/AudioLDM's scaled-linear (β 0.0015→0.0195, terminal SNR
1.4e-4: 1.2 % of the signal's amplitude is left at t = T) and the same scaled-linear rescaled to zero terminal SNR
(Lin et al. 2023); the last two differ only in terminal SNR. Parameterisations v and ε.
Every cell: the same data order, the same frozen tiny VAE and vocoder, the same training budget; scored on the
same held-out clips at 2/4/8/12 kHz with DDIM (η=1) and DPM-Solver++(2M) at several step counts.
"""

import ml_collections

from audiosr_jax.configs.ablations import demo_base


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "schedule_x_param"
    c.description = ("LDM noise schedule × parameterisation at tiny width on the offline corpus (frozen demo "
                     "VAE and vocoder).")
    c.base = demo_base()  # the demo's dataset, frozen VAE and vocoder, and LDM recipe
    # (dotted config key, values): the cells are the product of the axes, times the seeds
    c.axes = (("ldm.schedule", ("cosine", "scaled_linear", "scaled_linear_zero_snr")), ("ldm.parameterization", ("v", "eps")))
    c.seeds = [0, 1]  # training seeds (initialisation, noise, condition dropout); the data order is fixed
    c.eval = ml_collections.ConfigDict(dict(
        cutoffs_hz=[2000, 4000, 8000, 12000], clips=4, guidance=3.5, seed=0,
        samplers=[dict(sampler="ddim", eta=1.0, steps=[10, 25, 50]), dict(sampler="dpmpp_2m", eta=0.0, steps=[10])],
    ))
    return c
