"""benchmarks/bench_sampler_quality.py end to end on a tiny synthetic checkpoint: tables, paired differences
against the baseline, and a rerun that neither samples nor scores again."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sampler_quality",
                                                  ROOT / "benchmarks" / "bench_sampler_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _references(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * 48_000)) / 48_000
    for i in range(2):  # full band: a tone plus white noise
        x = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i}.wav", x.astype(np.float32), 48_000, subtype="FLOAT")
    return folder


def test_parse_setting_and_unet_calls(bench):
    s = bench.parse_setting("heun:13")
    assert s == {"sampler": "heun", "steps": 13, "dtype": "float32", "key": "heun-13-float32"}
    assert bench.unet_calls(s, 1000) == 25
    assert bench.unet_calls(bench.parse_setting("ddim:50:bfloat16"), 1000) == 50
    assert bench.unet_calls(bench.parse_setting("dpmpp_2m:10"), 1000) == 10
    for bad in ("ddim", "plms:10", "ddim:0", "ddim:10:float16"):
        with pytest.raises(SystemExit):
            bench.parse_setting(bad)


def test_paired_difference_and_verdict(bench):
    base = [{"output": f"lp4000/c{i}.wav", "lsd": 1.0 + i} for i in range(4)]
    files = [{"output": f"lp4000/c{i}.wav", "lsd": 1.0 + i + d} for i, d in enumerate([0.02, 0.04, 0.06, 0.08])]
    mean, se, n = bench.paired(files, base)
    assert n == 4 and mean == pytest.approx(0.05) and se == pytest.approx(np.std([0.02, 0.04, 0.06, 0.08], ddof=1) / 2)
    assert bench.verdict(0.05) == "equal quality" and bench.verdict(-0.051) == "better"
    assert bench.verdict(0.06) == "worse"


def test_bench_runs_reports_and_skips_finished_settings(bench, tiny_checkpoint_dir, tmp_path, monkeypatch, capsys):
    refs = _references(tmp_path / "refs")
    work = tmp_path / "work"
    argv = ["--checkpoint", tiny_checkpoint_dir, "--references", str(refs), "--workdir", str(work),
            "--cutoffs", "4000", "--settings", "ddim:2,dpmpp_2m:2", "--baseline", "ddim:2", "--batch-size", "1"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "low-passed input (do nothing): LSD" in printed

    with open(work / "sampler_quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["setting"] for r in rows] == ["ddim-2-float32", "dpmpp_2m-2-float32", "low-passed input"]
    base, other = rows[0], rows[1]
    assert float(base["dlsd_mean"]) == 0.0 and float(base["dlsd_se"]) == 0.0 and base["verdict"] == "equal quality"
    assert int(base["n"]) == 2 and int(base["unet_calls"]) == 2 and int(other["unet_calls"]) == 2

    # the paired difference is the mean of per-file differences of the stored scores
    s = {k: json.loads((work / "outputs" / k / "scores.json").read_text())["files"]
         for k in ("ddim-2-float32", "dpmpp_2m-2-float32")}
    assert [f["output"] for f in s["ddim-2-float32"]] == ["lp4000/clip0.wav", "lp4000/clip1.wav"]
    d = [b["lsd"] - a["lsd"] for a, b in zip(s["ddim-2-float32"], s["dpmpp_2m-2-float32"])]
    assert float(other["dlsd_mean"]) == pytest.approx(np.mean(d), abs=1e-9)
    assert d[0] != d[1]  # two independent files: the standard error is not degenerate
    assert float(other["lsd"]) == pytest.approx(np.mean([f["lsd"] for f in s["dpmpp_2m-2-float32"]]))
    assert float(rows[2]["lsd"]) > 0 and float(base["lsd"]) > 0

    md = (work / "sampler_quality.md").read_text()
    table = md.split("## All cutoffs pooled")[1].split("## LSD per cutoff")[0]
    assert table.count("| ddim-2-float32 (baseline) |") == 1 and table.count("| dpmpp_2m-2-float32 |") == 1
    assert "| low-passed input (do nothing) |" in table and "+0.000 ± 0.000 | equal quality" in table

    # a rerun reuses the scores: sampling or scoring again would fail here
    def refuse(*a, **k):
        raise AssertionError("finished setting was redone")

    monkeypatch.setattr(bench.ex, "super_resolve", refuse)
    monkeypatch.setattr(bench.ex, "score", refuse)
    assert bench.main(argv) == 0
    with open(work / "sampler_quality.csv") as f:
        assert [r["lsd"] for r in csv.DictReader(f)] == [r["lsd"] for r in rows]
    # another seed would make the stored scores stale: refused instead of mixed
    with pytest.raises(SystemExit, match="another --workdir"):
        bench.main(argv + ["--seed", "1"])
