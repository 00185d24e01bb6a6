"""Settings shared by the three training stages (mesh, sharding rules, loop, data). Stage files call
``base(stage, preset)`` and override what differs."""

import ml_collections

from audiosr_jax.configs import models


def base(stage: str, preset: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.model = models.get_config(preset)

    # Mesh: one size may be -1 (all remaining devices). (8,1), (2,4), (1,8) on 8 devices are all valid.
    # c.mesh is the fast-interconnect (ICI) part, laid out by jax's mesh_utils for the topology. mesh_dcn
    # multiplies it over the slow network (audiosr_jax.sharding.make_mesh): axis a gets mesh[a] * mesh_dcn[a]
    # devices, its outer factor across TPU slices, or across processes where there are no slices (GPU nodes,
    # CPU processes); then c.mesh (its -1 too) counts the devices of one slice / process. Examples:
    #   v5p, 2 slices of 64 chips:  mesh (("data", 1), ("fsdp", -1), ("tensor", 1)), mesh_dcn (("data", 2),)
    #   2 nodes x 8 GPUs:           mesh (("data", 1), ("fsdp", 8), ("tensor", 1)),  mesh_dcn (("data", 2),)
    # Put the DCN factor on a batch axis (data or fsdp): the processes must each read their own batch rows.
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.mesh_dcn = (("data", 1), ("fsdp", 1), ("tensor", 1))
    # Logical axis -> mesh axes (audiosr_jax/sharding.py): batch over data+fsdp, weights FSDP-sharded on
    # their input dimension, tensor-parallel on their output dimension.
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("conv_in", "fsdp"),
        ("mlp", "tensor"),
        ("conv_out", "tensor"),
        ("channels", None),
    )

    c.train = ml_collections.ConfigDict(dict(
        total_steps=100_000, batch_size=16, grad_accum=1, seed=0, compute_dtype="float32",
        log_every=50, eval_every=2000, eval_batches=4, eval_batch_size=8,
        save_every=1000, keep_checkpoints=3, async_checkpoints=True,
        max_consecutive_nonfinite=20, init_from="",
    ))
    # data.lowpass: "host" (scipy chain in the loader), "device" (the loader ships filter parameters, the step
    # filters the waveform in the frequency domain), "device_stft" (same parameters; the LDM step applies the
    # gain to the target's STFT: no extra FFT, the cheapest), "none" (VAE / vocoder)
    c.data = ml_collections.ConfigDict(dict(
        dataset_dir="", crop_samples=245_760, seed=0, worker_count=0, lowpass="host",
        degrade=dict(families=["butter", "cheby1", "cheby2", "ellip", "bessel"], min_order=2, max_order=10,
                     min_cutoff_hz=2000.0, max_cutoff_hz=16000.0, cutoff_distribution="uniform",
                     sample_rate=48000, cheby2_min_order=8, cutoff_step_hz=50),
    ))
    return c
