"""benchmarks/bench_roofline.py cannot rot: `cost_of` reads every shape of XLA's cost analysis, and a whole
`--width tiny --no-reference` run (small peaks, one repeat) prints the table and writes a JSON whose every
stage has positive FLOPs, seconds and rates."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_roofline", ROOT / "benchmarks" / "bench_roofline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Compiled:
    def __init__(self, cost):
        self.cost = cost

    def cost_analysis(self):
        if isinstance(self.cost, Exception):
            raise self.cost
        return self.cost


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_cost_of_reads_dict_list_none_and_errors():
    bench = _bench_module()
    assert bench.cost_of(_Compiled({"flops": 10.0, "bytes accessed": 4.0})) == {"flops": 10.0, "bytes": 4.0}
    assert bench.cost_of(_Compiled([{"flops": 3.0}])) == {"flops": 3.0, "bytes": None}
    for empty in (None, [], {"flops": -1.0}, NotImplementedError("no cost analysis")):
        assert bench.cost_of(_Compiled(empty)) == {"flops": None, "bytes": None}


def test_tiny_dry_run(tmp_path, capsys):
    bench = _bench_module()
    out_json = tmp_path / "roofline.json"
    out = bench.main(["--width", "tiny", "--no-reference", "--repeats", "1", "--peak-n", "256",
                      "--peak-seconds", "0.05", "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert "GFLOP/s" in printed and "matmul peak" in printed and "conv peak" in printed
    saved = json.loads(out_json.read_text())
    assert saved["reference"] is None and set(saved["stages"]) == set(bench.STAGES)
    for name in ("matmul", "conv"):
        assert _positive(saved["peaks"][name]["gflops"]), name
    for key, r in saved["stages"].items():
        for k in ("flops", "bytes", "s", "gflops", "frac_matmul_peak", "frac_conv_peak"):
            assert _positive(r[k]), (key, k, r[k])
        assert r["reference_s"] is None and r["ratio"] is None
        assert r["label"] in printed
    assert out["stages"]["unet"]["s"] == saved["stages"]["unet"]["s"]
