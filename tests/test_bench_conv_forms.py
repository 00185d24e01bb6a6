"""Smoke test of benchmarks/bench_conv_forms.py at tiny width in bf16: every form of every conv agrees with
XLA's convolution (both accumulate in float32), and the matmul line reports both bf16 result types."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_conv_forms  # noqa: E402


def test_bf16_forms_agree_and_the_matmul_is_measured_both_ways(capsys):
    res = bench_conv_forms.main(["--width", "tiny", "--forms", "conv,shifted,im2col", "--dtype", "bfloat16",
                                 "--matmul", "128", "--repeats", "1"])
    assert res["dtype"] == "bfloat16" and set(res["matmul"]) == {"f32 accumulation", "bf16 result"}
    names = {r["name"] for r in res["rows"]}
    assert {n.split()[0] for n in names} == {"vae", "unet", "voc"}
    for r in res["rows"]:
        assert r["s"] > 0 and r["max_abs_diff"] < 1e-3, r  # the same bf16 inputs, f32 sums in another order
    assert len(res["rows"]) == 3 * len(names)
    assert "bf16 result" in capsys.readouterr().out
