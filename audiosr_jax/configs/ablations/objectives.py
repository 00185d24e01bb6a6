"""Ablation: the training objective of the LDM (few-step sampling), at the demo's tiny width on the offline corpus.

  python ablate.py --grid=audiosr_jax/configs/ablations/objectives.py --workdir=out/ablations/objectives

Question: which objective gives the best super-resolution at very few network evaluations (NFE)? Arms:
the reference's diffusion (unclipped cosine, v-prediction), rectified flow from noise (``objective=flow``,
logit-normal t) and the bridge from the condition latent (``objective=bridge``, start c·scale + 0.5·ε;
audiosr_jax/diffusion/flow.py). Every arm samples with the two samplers both objectives have, so each NFE
budget is compared paired (same clips, cutoffs and noise):

* ``euler`` at 1, 2, 4, 10, 50 steps = NFE (for diffusion: the probability-flow ODE on the log-SNR grid; for
  flow/bridge: Euler on the flow ODE);
* ``heun`` at 1, 2, 3, 5, 25 steps = 1, 3, 5, 9, 49 NFE (2·steps − 1; its last step is Euler);

and with its own: AudioSR's DDIM (η = 1) at 10 and 50 steps for diffusion, ``midpoint`` at 1, 2, 5 steps
(2, 4, 10 NFE) for flow and bridge (``only`` in the sampler entries). Every cell: the same data order, frozen
tiny VAE and vocoder, training budget; scored on the same held-out clips at 2/4/8/12 kHz.

Students: each cosine/v (diffusion) cell is also distilled into 4-, 2- and 1-step students (the distill stage:
progressive distillation, 100 steps per round; the 4-step student from the cell's 64-step grid with its guidance
baked in, in 4 rounds, then 2 from 4 and 1 from 2, one round each) and each student is compared paired with
its own teacher at DDIM 50.
"""

import ml_collections

from audiosr_jax.configs.ablations import demo_base


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "objectives"
    c.description = ("LDM objective (cosine/v diffusion, rectified flow, bridge from the condition) at 1–50 "
                     "network evaluations, tiny width on the offline corpus (frozen demo VAE and vocoder).")
    c.base = demo_base()  # the demo's dataset, frozen VAE and vocoder, and LDM recipe
    c.axes = (("ldm.objective", ("diffusion", "flow", "bridge")),)
    c.seeds = [0, 1]
    c.eval = ml_collections.ConfigDict(dict(
        cutoffs_hz=[2000, 4000, 8000, 12000], clips=4, guidance=3.5, seed=0,
        # eta is unused by these deterministic samplers; the keys read euler-<steps> / heun-<steps>
        samplers=[dict(sampler="euler", eta=0.0, steps=[1, 2, 4, 10, 50]),
                  dict(sampler="heun", eta=0.0, steps=[1, 2, 3, 5, 25]),
                  dict(sampler="ddim", eta=1.0, steps=[10, 50], only={"ldm.objective": ["diffusion"]}),
                  dict(sampler="midpoint", eta=0.0, steps=[1, 2, 5], only={"ldm.objective": ["flow", "bridge"]})],
    ))
    c.students = ml_collections.ConfigDict(dict(
        teacher=(("ldm.objective", "diffusion"),), steps=[1, 2, 4], compare_to="ddim-eta1-50",
        distill=dict(teacher_steps=64, steps_per_round=100),
    ))
    return c
