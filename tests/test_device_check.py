"""benchmarks/device_check: its helpers (OOM fallback, memory prediction, time budget, guarded sections) and
one whole `device_check.sh --dry-run` (CPU, tiny width), whose JSON must hold every section's figures and
whose lines must come out as they are measured."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import device_check as dc  # noqa: E402


def _oom_above(limit):
    def run(batch):
        if batch > limit:
            raise RuntimeError(f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate {batch} GB")
        return {"batch": batch}
    return run


def test_largest_that_fits_steps_down_on_out_of_memory():
    ooms = []
    batch, result = dc.largest_that_fits(_oom_above(4), [16, 8, 4, 2], on_oom=lambda b, e: ooms.append(b))
    assert (batch, result, ooms) == (4, {"batch": 4}, [16, 8])
    assert dc.largest_that_fits(_oom_above(0), [2, 1]) == (None, None)


def test_largest_that_fits_lets_other_errors_through():
    def run(batch):
        raise ValueError("a bug, not memory")
    with pytest.raises(ValueError):
        dc.largest_that_fits(run, [2, 1])


def test_batches_override_replaces_a_stages_candidates():
    plan = dc.with_batches(dc.FULL, ["ldm=64,48"])
    assert plan.train_batches["ldm"] == (64, 48) and plan.train_batches["vae"] == dc.FULL.train_batches["vae"]
    with pytest.raises(SystemExit):
        dc.with_batches(dc.FULL, ["unet=4"])


def test_mfu_and_unknown_peak():
    r = dc.train_figures({"step_s": 2.0, "flops_per_step": 4e12}, peak=1e12)
    assert r["tflops_per_s"] == pytest.approx(2.0) and r["mfu"] == pytest.approx(2.0)
    assert dc.train_figures({"step_s": 2.0, "flops_per_step": 4e12}, peak=None)["mfu"] == "unknown"


def test_budget_skips_and_guarded_failures_are_recorded(tmp_path, capsys):
    report = dc.Report(str(tmp_path / "r.json"), budget_s=10.0, mode="test")
    assert dc.fits_in_time(report, "cheap", 1.0)
    assert not dc.fits_in_time(report, "expensive item", 60.0)
    with dc.guarded(report, "broken section"):
        raise RuntimeError("first line\nsecond line")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [s["item"] for s in data["skipped"]] == ["expensive item"]
    assert data["errors"] == [{"item": "broken section", "error": "RuntimeError: first line"}]
    out = capsys.readouterr().out
    assert "skipped expensive item" in out and "FAILED broken section" in out


def _finite_numbers(d: dict, keys) -> None:
    for k in keys:
        assert isinstance(d.get(k), (int, float)) and math.isfinite(d[k]), (k, d.get(k))


@pytest.mark.slow
def test_dry_run_writes_every_section_incrementally(tmp_path):
    out = tmp_path / "tmp.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable,
               XLA_FLAGS="--xla_force_host_platform_device_count=2")  # a 2-device mesh, not conftest's 8
    cmd = ["bash", os.path.join(REPO, "benchmarks", "device_check.sh"), "--dry-run", "--out", str(out),
           "--budget-s", "900"]  # a loaded CI machine must not skip anything
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = [(time.perf_counter() - t0, line.rstrip()) for line in proc.stdout]
    assert proc.wait() == 0, "\n".join(line for _, line in lines[-30:])
    end = time.perf_counter() - t0

    data = json.loads(out.read_text())
    assert data["mode"] == "dry-run" and data["errors"] == [] and data["skipped"] == []
    _finite_numbers(data["environment"], ["device_count", "cpu_count"])
    assert data["environment"]["platform"] == "cpu" and data["environment"]["bf16_peak_flops"] == "unknown"
    runs = data["inference"]["runs"]
    assert {(r["dtype"], r["sampler"], r["windows"]) for r in runs} == {("float32", "ddim", 2),
                                                                         ("bfloat16", "dpmpp_2m", 4)}
    for r in runs:
        _finite_numbers(r, ["compile_s", "first_call_s", "batch_s", "s_per_window", "x_realtime"])
        assert r["finite"]
    stages = {r["stage"]: r for r in data["training"]["runs"]}
    assert set(stages) == {"ldm", "vae", "vocoder"}
    for r in stages.values():
        assert r["batch"] == 2 and r["dtype"] == "bfloat16" and r["finite"]
        _finite_numbers(r, ["compile_s", "step_s", "flops_per_step", "tflops_per_s", "loss"])
        assert r["mfu"] == "unknown"  # no bf16 peak for a CPU

    # each figure printed when measured: the environment long before the end, the sections in order
    text = [line for _, line in lines]
    first = {s: next(i for i, line in enumerate(text) if f"] {s}" in line) for s in ("environment", "inference",
                                                                                       "training")}
    assert first["environment"] < first["inference"] < first["training"], text
    assert lines[first["environment"]][0] < end - 5.0, lines
