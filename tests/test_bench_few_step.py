"""benchmarks/bench_few_step.py without timing anything: every setting is one the pipeline accepts for its
objective, and the table's ratios and shares are computed from the figures it is given."""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_few_step as bf  # noqa: E402


def test_every_setting_is_accepted_for_its_objective():
    from audiosr_jax.diffusion import sampling
    from audiosr_jax.diffusion.config import DiffusionConfig

    for _, objective, sampler, steps, guidance in bf.SETTINGS:
        sampling.check_options(DiffusionConfig(objective=objective), sampler, steps)  # raises if refused
        assert guidance == (1.0 if sampler == "ddim_progressive" else 3.5)  # a student's guidance is baked in


def test_table_ratios_and_shares():
    ours = {"stages": {"frontend": 0.1, "vae_encode": 2.0, "unet_cfg_pair": 1.0, "vae_decode": 3.0,
                       "vocoder": 5.0, "postprocess": 0.1},
            "settings": [{"setting": "flow Euler 1", "calls": 1, "window_s": 12.0, "compile_and_run_s": 60.0},
                         {"setting": "flow Euler 4", "calls": 4, "window_s": 20.0, "compile_and_run_s": 70.0}]}
    text = bf.table(ours, {"generate_batch_s": 100.0, "generate_batch_steps": 50})
    rows = {line[:32].strip(): line[32:].split() for line in text.splitlines()[1:4]}
    assert rows["reference DDIM 50 (PyTorch)"][:3] == ["50", "100.00", "1.00"]
    assert rows["flow Euler 1"] == ["1", "12.00", "8.33", "83%"]  # 100/12; (2+3+5)/12
    assert rows["flow Euler 4"] == ["4", "20.00", "5.00", "50%"]
    assert "–" in bf.table(ours, None).splitlines()[1]
    with pytest.raises(KeyError):
        bf.table({"stages": {}, "settings": []}, None)


def test_benchmark_weights_move_to_the_device_in_place():
    """bench_stages.move_to_device: every leaf of the nested params becomes a device array with the same
    values, in the same dict objects (so the host copies are dropped as it goes)."""
    import jax
    import numpy as np

    inner = {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float32)}
    tree = {"unet": {"block": inner}, "scale": np.float32(0.5)}
    bf.bench_stages.move_to_device(tree)
    assert tree["unet"]["block"] is inner  # in place
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(tree))
    np.testing.assert_array_equal(np.asarray(inner["kernel"]), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert float(tree["scale"]) == 0.5


def test_stage_summary_takes_medians_and_pairs_each_round():
    """bench_stages.summarise: medians over rounds on each side, their ratio, and the range of the per-round
    ratios (each round's reference against the same round's ours); the reference's pair is 2 UNet calls."""
    refs = [{"unet_s": 1.0, "vocoder_s": 10.0}, {"unet_s": 3.0, "vocoder_s": 30.0}, {"unet_s": 2.0, "vocoder_s": 20.0}]
    ours = [{"unet_s": 1.0, "unet_cfg_pair_s": 1.5, "vocoder_s": 10.0},
            {"unet_s": 1.0, "unet_cfg_pair_s": 1.5, "vocoder_s": 10.0},
            {"unet_s": 4.0, "unet_cfg_pair_s": 1.5, "vocoder_s": 5.0}]
    rows = {r["name"]: r for r in bf.bench_stages.summarise(refs, ours)}
    unet = rows["one UNet call"]
    assert (unet["reference"], unet["ours"], unet["ratio"]) == (2.0, 1.0, 2.0)
    assert (unet["ratio_min"], unet["ratio_max"]) == (0.5, 3.0)  # 2/4 and 3/1, round by round
    pair = rows["UNet, CFG pair (ours: one batched call; ref: 2 calls)"]
    assert (pair["reference"], pair["ours"]) == (4.0, 1.5)
    voc = rows["vocoder (512 frames)"]
    assert voc["ratio"] == 2.0 and (voc["ratio_min"], voc["ratio_max"]) == (1.0, 4.0)
    assert rows["front-end incl. low-pass"]["ratio"] is None  # absent on both sides
    no_ref = {r["name"]: r for r in bf.bench_stages.summarise([], ours)}
    assert no_ref["one UNet call"]["reference"] is None and no_ref["one UNet call"]["ours"] == 1.0


def test_stage_summary_of_another_dtype_reads_its_own_keys():
    """bench_stages --dtypes: ours in bf16 is keyed `stage_key(stage, "bfloat16")` and set against the same
    reference; the process's peak RSS belongs to the float32 table only."""
    key = bf.bench_stages.stage_key
    assert (key("unet", "float32"), key("unet", "bfloat16")) == ("unet_s", "unet_bfloat16_s")
    refs = [{"unet_s": 1.0, "generate_batch_s": 50.0}]
    ours = [{"unet_s": 0.5, "unet_bfloat16_s": 0.25, "sampling_s": 40.0, "sampling_bfloat16_s": 25.0,
             "peak_rss_gb": 5.0}]
    rows = {r["name"]: r for r in bf.bench_stages.summarise(refs, ours, "bfloat16")}
    assert rows["one UNet call"]["ours"] == 0.25 and rows["one UNet call"]["ratio"] == 4.0
    assert rows["sampling, whole pipeline"]["ratio"] == 2.0
    assert rows["peak RSS (GB)"]["ours"] is None
    assert {r["name"]: r for r in bf.bench_stages.summarise(refs, ours)}["one UNet call"]["ratio"] == 2.0
