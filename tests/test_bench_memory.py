"""Smoke test of benchmarks/bench_memory.py: one cold --low-memory sample.py process on the tiny synthetic
checkpoint (one DDIM step); the table is printed and the child's peak RSS and wall time are recorded."""

import importlib.util
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_memory_runs_sample_py_and_reports_its_peak(tmp_path, tiny_checkpoint_dir, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "bench_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--checkpoint", tiny_checkpoint_dir, "--steps", "1",
                                      "--modes", "low-memory", "--cold", "--workdir", str(tmp_path)])
    assert mod.main() == 0
    out = capsys.readouterr().out
    assert "| audiosr-jax ddim 1, low-memory, batch 1 |" in out
    rows = json.loads((tmp_path / "results.json").read_text())["ours"]
    assert len(rows) == 1
    assert 0.1 < rows[0]["peak_rss_gb"] < 8 and math.isfinite(rows[0]["wall_s"]) and rows[0]["wall_s"] > 0
    assert (tmp_path / "out" / "clip0.wav").is_file()
