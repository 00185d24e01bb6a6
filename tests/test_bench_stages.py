"""Smoke test of benchmarks/bench_train_stages.py: the tiny VAE stage (cut to one downsample and a 2-layer
PatchGAN so it compiles quickly) is compiled and timed for one step through ``main``; the table is printed
and every figure in the JSON is positive and finite. The PRNG is RBG (cheaper to compile than threefry), as
in test_train_stages."""

import importlib.util
import json
import math
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _rbg_prng():
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
    yield
    jax.config.update("jax_default_prng_impl", old)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_train_stages", ROOT / "benchmarks" / "bench_train_stages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_vae_one_step(tmp_path, capsys):
    bench = _bench_module()
    assert _positive(bench.measure_peak_gflops(n=256, min_seconds=0.05))
    out_json = tmp_path / "bench.json"
    out = bench.main(["--stages", "vae", "--widths", "tiny", "--crop", "7680", "--steps", "1", "--warmup", "0",
                      "--peak-gflops", "50", "--set", "model.vae.ch_mult=[1,1]", "--set", "vae.disc.n_layers=2",
                      "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert "GFLOP/step" in printed and "vae" in printed and "MFU" in printed
    saved = json.loads(out_json.read_text())
    assert saved["peak_gflops"] == 50
    (r,) = saved["results"]
    assert (r["stage"], r["width"], r["batch"], r["crop_samples"]) == ("vae", "tiny", 2, 7680)
    assert r["finite"] and math.isfinite(r["loss"])
    for k in ("compile_s", "flops_per_step", "bytes_accessed_per_step", "step_s", "gflops_per_s", "mfu",
              "examples_per_s", "peak_rss_gb"):
        assert _positive(r[k]), (k, r[k])
    assert set(r["params"]) == {"vae", "loss", "discriminator"} and all(_positive(n) for n in r["params"].values())
    assert _positive(r["memory"]["argument_bytes"]) and _positive(r["memory"]["temp_bytes"])
    assert out["results"][0]["step_s"] == r["step_s"]
