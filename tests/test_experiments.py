"""The demo's and the ablation harness's own logic: stage overrides, held-out clips, per-cutoff verdicts, grid
cells, result gathering and the report. Training and sampling themselves are tested elsewhere
(test_train_loop, test_train_stages, test_export, test_sample_cli)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiosr_jax.lab import ablation, demo
from audiosr_jax.lab import experiments as ex

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "tests" / "fixtures" / "corpus_slice"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from audiosr_jax.data.segments import SegmentConfig, build_dataset

    out = tmp_path_factory.mktemp("tfds")
    return build_dataset({d: [SLICE / d] for d in ("music", "speech", "effects")}, out,
                         config=SegmentConfig(segment_seconds=1.28, validation_fraction=0.5))


def test_held_out_clips_come_from_validation_files_deterministically(dataset, tmp_path):
    from audiosr_jax.data.segments import open_split

    val_sources = {Path(open_split(dataset, "validation")[i]["source"].decode()).stem
                   for i in range(len(open_split(dataset, "validation")))}
    train_sources = {Path(open_split(dataset, "train")[i]["source"].decode()).stem
                     for i in range(len(open_split(dataset, "train")))}
    a = ex.held_out_clips(dataset, tmp_path / "a", 4, seconds=1.0)
    b = ex.held_out_clips(dataset, tmp_path / "b", 4, seconds=1.0)
    assert [p.name for p in a] == [p.name for p in b] and 1 <= len(a) <= 4
    for pa, pb in zip(a, b):
        xa, sr = sf.read(pa, dtype="float32")
        assert sr == 48_000 and xa.shape == (48_000,)
        np.testing.assert_array_equal(xa, sf.read(pb, dtype="float32")[0])
        domain, rest = pa.stem.split("_", 1)
        assert domain in ("music", "speech", "effects")
        stem = rest.rsplit("_", 1)[0]
        assert stem in val_sources and stem not in train_sources  # never a training recording
    # one clip per recording before any recording gives a second
    stems = [p.stem.rsplit("_", 1)[0] for p in a]
    assert len(set(stems)) == min(len(stems), len(val_sources))


def test_held_out_clips_refuses_when_nothing_is_long_enough(dataset, tmp_path):
    with pytest.raises(SystemExit, match="no non-silent clip of 5.0 s"):
        ex.held_out_clips(dataset, tmp_path, 2, seconds=5.0)


def _row(khz, lsd, inp, **kw):
    return {"status": "ok", "cutoff_bucket_khz": khz, "lsd": lsd, "input_lsd": inp, "lsd_hf": lsd + 0.5,
            "input_lsd_hf": inp + 1.0, "lsd_lf": 0.1, "si_sdr": 5.0, **kw}


def test_per_cutoff_means_and_verdict():
    rows = [_row(2.0, 1.0, 3.0), _row(2.0, 2.0, 3.0), _row(4.0, 2.5, 2.0), {"status": "failed", "cutoff_bucket_khz": 8.0}]
    table = ex.per_cutoff(rows)
    assert [e["cutoff_khz"] for e in table] == [2.0, 4.0]  # failed rows are not averaged
    assert table[0]["n"] == 2 and table[0]["lsd"] == pytest.approx(1.5) and table[0]["lsd_std"] == pytest.approx(0.5)
    assert table[0]["beats_baseline"] and not table[1]["beats_baseline"]
    text = ex.format_per_cutoff(table)
    assert "yes" in text and "NO" in text and "low-passed input" in text


def test_demo_overrides_are_valid_config_keys_and_scale_steps(tmp_path):
    ds = tmp_path / "ds"
    for stage in ("vae", "vocoder", "ldm"):
        o = demo.stage_overrides(stage, tmp_path, ds, steps_scale=0.5)
        assert o["train.total_steps"] == max(1, round(demo.STAGE_OVERRIDES[stage]["train.total_steps"] * 0.5))
        cfg = ex.stage_config(stage, o)  # raises on a key the preset does not have
        assert cfg.train.total_steps == o["train.total_steps"] and cfg.data.dataset_dir == str(ds)
        assert f"--config=audiosr_jax/configs/{stage}.py:tiny" in ex.command_line(stage, tmp_path / stage, o)
    assert ex.stage_config("ldm", demo.stage_overrides("ldm", tmp_path, ds)).ldm.vae_from == str(tmp_path / "vae")


def test_latest_step_reads_committed_steps_only(tmp_path):
    assert ex.latest_step(tmp_path) == 0
    for name in ("50", "100", "100.corrupt", "tmp"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert ex.latest_step(tmp_path) == 100


@pytest.fixture()
def grid():
    from audiosr_jax.configs.ablations.schedule_x_param import get_config

    return get_config()


def test_grid_cells_are_a_product_with_valid_overrides(grid, tmp_path):
    from audiosr_jax.diffusion.schedules import make_alphas_cumprod

    cells = ablation.cells(grid)
    n = 6 * len(grid.seeds)
    assert len(cells) == n and len({c["dir"] for c in cells}) == n and len({c["name"] for c in cells}) == n
    prepared = {"dataset": tmp_path / "ds", "base": tmp_path / "base"}
    for c in cells:
        o = ablation.ldm_overrides(grid, c, prepared)
        cfg = ex.stage_config("ldm", o)
        assert cfg.ldm.schedule == c["axes"]["ldm.schedule"] and cfg.train.seed == c["seed"]
        assert cfg.train.total_steps == grid.base.ldm.train.total_steps and cfg.data.seed == 0  # same budget, data
        ac = make_alphas_cumprod(cfg.ldm.schedule, cfg.ldm.num_timesteps, **dict(cfg.ldm.schedule_kwargs))
        assert np.all(np.diff(ac) <= 0)
    keys = [s["key"] for s in ablation.eval_settings(grid)]
    assert len(keys) == len(set(keys)) == 4


def _fake_results(grid, cell, workdir, offset):
    files = []
    for khz in (2.0, 4.0, 8.0, 12.0):
        for i in range(3):
            files.append({"output": f"lp{int(khz * 1000)}/clip{i}.wav", "cutoff_bucket_khz": khz,
                          "lsd": offset + khz / 10 + i * 0.01, "lsd_hf": offset + 1.0, "lsd_lf": 0.2, "si_sdr": 3.0,
                          "input_lsd": 4.0, "input_lsd_hf": 6.0})
    evals = {s["key"]: {**s, "seconds": 1.0, "per_cutoff": [], "files": files} for s in ablation.eval_settings(grid)}
    path = workdir / "cells" / cell["dir"] / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"cell": cell, "evals": evals}))


def test_report_gathers_finished_cells(grid, tmp_path):
    cells = [c for c in ablation.cells(grid) if c["seed"] == 0]
    _fake_results(grid, cells[0], tmp_path, 1.0)
    _fake_results(grid, cells[3], tmp_path, 2.0)
    rows = ablation.collect(grid, tmp_path)
    assert len(rows) == 2 * 4 * 5  # cells × settings × (4 cutoffs + all)
    md = ablation.write_report(grid, tmp_path, rows).read_text()
    assert "schedule=cosine, parameterization=v" in md and "schedule=scaled_linear, parameterization=eps" in md
    assert "zero_snr" not in md.split("## LSD (")[1]  # unfinished cells are not in the tables
    all_row = next(r for r in rows if r["cell"] == cells[0]["name"] and r["cutoff_khz"] == "all")
    assert all_row["lsd"] == pytest.approx(1.0 + np.mean([0.2, 0.4, 0.8, 1.2]) + 0.01)
    assert f"{all_row['lsd']:.3f}" in md and "| low-passed input | 4.000 |" in md
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (tmp_path / "lsd_vs_steps.png").stat().st_size > 1000


def test_finished_cell_is_not_rerun(grid, tmp_path):
    cell = ablation.cells(grid)[0]
    _fake_results(grid, cell, tmp_path, 1.0)
    # a finished cell returns before touching training, export or sampling (nothing here could run them)
    res = ablation.run_cell(grid, cell, tmp_path, {"dataset": None, "base": None, "inputs": None, "references": None})
    assert set(res["evals"]) == {s["key"] for s in ablation.eval_settings(grid)}


def test_unknown_cell_is_refused(grid, tmp_path):
    with pytest.raises(SystemExit, match="no cell 'nope'"):
        ablation.run(grid, tmp_path, only_cell="nope")


def test_report_has_paired_differences_against_the_first_cell(grid, tmp_path):
    cells = [c for c in ablation.cells(grid) if c["seed"] == 0]
    _fake_results(grid, cells[0], tmp_path, 1.0)
    _fake_results(grid, cells[1], tmp_path, 0.5)  # every file 0.5 better in LSD
    md = ablation.write_report(grid, tmp_path, ablation.collect(grid, tmp_path)).read_text()
    paired = md.split("## Paired differences")[1]
    assert (f"| {cells[1]['name']} (vs {cells[0]['name']}) | -0.500 ± 0.000 | -0.500 ± 0.000 | +0.000 ± 0.000 "
            "| 12/12 |") in paired


def test_seed_replicates_pool_into_mean_and_spread(grid, tmp_path):
    c0, c1 = [c for c in ablation.cells(grid) if c["axes"] == ablation.cells(grid)[0]["axes"]][:2]
    assert (c0["seed"], c1["seed"]) == (0, 1)
    _fake_results(grid, c0, tmp_path, 1.0)
    _fake_results(grid, c1, tmp_path, 1.2)
    md = ablation.write_report(grid, tmp_path, ablation.collect(grid, tmp_path)).read_text()
    lsd_table = md.split("## LSD (")[1].split("##")[0]
    mean = 1.1 + np.mean([0.2, 0.4, 0.8, 1.2]) + 0.01
    assert f"{mean:.3f} ± 0.100" in lsd_table  # mean ± std over the two training seeds


def test_settings_limited_to_some_cells_are_scored_only_there_and_compared_on_common_ones(tmp_path):
    """The objectives grid: DDIM only in the diffusion cells, midpoint only in flow/bridge cells; tables and
    plot by network evaluations; paired differences only at settings every cell has."""
    from audiosr_jax.configs.ablations.objectives import get_config

    grid = get_config()
    by_objective = {c["axes"]["ldm.objective"]: c for c in ablation.cells(grid) if c["seed"] == 0}
    settings = {s["key"]: s for s in ablation.eval_settings(grid)}
    assert settings["heun-3"]["calls"] == 5 and settings["midpoint-2"]["calls"] == 4
    assert settings["ddim-eta1-50"]["calls"] == 50 and settings["euler-1"]["calls"] == 1
    scored = {o: {k for k, s in settings.items() if ablation.applies(s, c)} for o, c in by_objective.items()}
    assert "ddim-eta1-10" in scored["diffusion"] and "midpoint-1" not in scored["diffusion"]
    assert "midpoint-5" in scored["flow"] == scored["bridge"] and "ddim-eta1-50" not in scored["bridge"]
    common = [s["key"] for s in ablation.common_settings(grid)]
    assert set(common) == scored["diffusion"] & scored["flow"] and "euler-50" in common
    assert [settings[k]["calls"] for k in common] == sorted(settings[k]["calls"] for k in common)
    # a cell given results for its own settings only is finished: run_cell returns without training
    for offset, (objective, cell) in enumerate(by_objective.items()):
        files = [{"output": f"lp{k}000/clip{i}.wav", "cutoff_bucket_khz": float(k), "lsd": 1.0 + offset / 10 + i / 100,
                  "lsd_hf": 2.0, "lsd_lf": 0.2, "si_sdr": 3.0, "input_lsd": 4.0, "input_lsd_hf": 6.0}
                 for k in (4, 8) for i in range(2)]
        evals = {k: {**s, "seconds": 1.0, "per_cutoff": [], "files": files} for k, s in settings.items()
                 if k in scored[objective]}
        path = tmp_path / "cells" / cell["dir"] / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"cell": cell, "evals": evals}))
        res = ablation.run_cell(grid, cell, tmp_path, {"dataset": None, "base": None, "inputs": None,
                                                        "references": None})
        assert set(res["evals"]) == scored[objective]
    # seed 1's diffusion and flow cells: paired with each other, never with seed 0's cells
    seed1 = {c["axes"]["ldm.objective"]: c for c in ablation.cells(grid) if c["seed"] == 1}
    for objective, lsd in (("diffusion", 1.5), ("flow", 1.55)):
        files = [{"output": f"lp{k}000/clip{i}.wav", "cutoff_bucket_khz": float(k), "lsd": lsd + i / 100,
                  "lsd_hf": 2.0, "lsd_lf": 0.2, "si_sdr": 3.0, "input_lsd": 4.0, "input_lsd_hf": 6.0}
                 for k in (4, 8) for i in range(2)]
        path = tmp_path / "cells" / seed1[objective]["dir"] / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"cell": seed1[objective], "evals": {
            k: {**s, "seconds": 1.0, "per_cutoff": [], "files": files} for k, s in settings.items()
            if k in scored[objective]}}))
    md = ablation.write_report(grid, tmp_path, ablation.collect(grid, tmp_path)).read_text()
    paired = md.split("## Paired differences against the first cell of the same seed (")[1:]
    assert sorted(p.split(")")[0] for p in paired) == sorted(common)
    rows = {line.split(" (vs ")[0][2:]: line for line in paired[0].splitlines() if line.startswith("| objective=")}
    assert set(rows) == {by_objective["flow"]["name"], by_objective["bridge"]["name"], seed1["flow"]["name"]}
    assert f"(vs {by_objective['diffusion']['name']}) | +0.100 ± 0.000 |" in rows[by_objective["flow"]["name"]]
    assert f"(vs {seed1['diffusion']['name']}) | +0.050 ± 0.000 |" in rows[seed1["flow"]["name"]]
    lsd_table = md.split("## LSD (")[1].split("##")[0]
    header = next(line for line in lsd_table.splitlines() if line.startswith("| cell |")) + " "
    assert header.index("euler-1 ") < header.index("midpoint-1 ") < header.index("ddim-eta1-50")  # by NFE
    diffusion_row = next(line for line in lsd_table.splitlines() if "objective=diffusion" in line)
    assert diffusion_row.count(" - ") == len([k for k in settings if k not in scored["diffusion"]])


def test_students_are_distilled_from_their_teacher_cells_and_compared_with_them(tmp_path):
    """The objectives grid's students: one per diffusion cell and step count, distilled as a chain (4 from the
    teacher cell's LDM run, 2 from 4, 1 from 2; valid distill overrides with each link's round schedule, trained
    in that order); a finished student is not rerun; the report puts each student in the tables at its own
    setting and compares it paired with its own teacher."""
    from audiosr_jax.configs.ablations.objectives import get_config
    from audiosr_jax.diffusion.progressive import num_rounds

    grid = get_config()
    students = ablation.student_cells(grid)
    teachers = [c for c in ablation.cells(grid) if c["axes"]["ldm.objective"] == "diffusion"]
    assert [(s["teacher"]["name"], s["steps"]) for s in students] == [(t["name"], n) for t in teachers for n in (1, 2, 4)]
    assert len({s["dir"] for s in students} | {c["dir"] for c in ablation.cells(grid)}) == len(students) + 6
    prepared = {"dataset": tmp_path / "ds", "base": tmp_path / "base"}
    s1, s2, s4 = students[:3]
    # a chain: the 4-step student from the teacher cell (guidance baked in), 2 from 4, 1 from 2
    cfg = ex.stage_config("distill", ablation.distill_overrides(grid, s4, tmp_path, prepared))  # real keys only
    assert cfg.distill.teacher == str(tmp_path / "cells" / teachers[0]["dir"] / "ldm") and cfg.distill.student_steps == 4
    assert cfg.distill.teacher_steps == 64 and cfg.distill.guidance == 3.5
    assert cfg.train.total_steps == num_rounds(64, 4) * 100 == 400 and cfg.train.seed == 0
    assert cfg.ldm.vae_from == str(tmp_path / "base" / "vae")
    for student, parent in ((s2, s4), (s1, s2)):
        cfg = ex.stage_config("distill", ablation.distill_overrides(grid, student, tmp_path, prepared))
        assert cfg.distill.teacher == str(tmp_path / "cells" / parent["dir"] / "distill")
        assert (cfg.distill.teacher_steps, cfg.distill.student_steps) == (parent["steps"], student["steps"])
        assert cfg.distill.guidance == 1.0 and cfg.train.total_steps == 100 and cfg.train.seed == 0

    calls = []

    def fake_train_stage(stage, wd, overrides, say=None):
        calls.append((stage, Path(wd).relative_to(tmp_path / "cells").as_posix(), overrides.get("distill.teacher")))
        if stage == "distill" and "student1" in str(wd):
            raise StopIteration  # the chain has been trained in order; stop before export
        return {}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "train_stage", fake_train_stage)
        with pytest.raises(StopIteration):
            ablation.run_student(grid, s1, tmp_path, prepared)
    t = teachers[0]["dir"]
    assert calls == [("ldm", f"{t}/ldm", None),
                     ("distill", f"{t}-student4/distill", str(tmp_path / "cells" / t / "ldm")),
                     ("distill", f"{t}-student2/distill", str(tmp_path / "cells" / f"{t}-student4" / "distill")),
                     ("distill", f"{t}-student1/distill", str(tmp_path / "cells" / f"{t}-student2" / "distill"))]

    def write(cell, setting_keys, offset):
        files = [{"output": f"lp{k}000/clip{i}.wav", "cutoff_bucket_khz": float(k), "lsd": 2.0 + offset + i / 100,
                  "lsd_hf": 2.0, "lsd_lf": 0.2, "si_sdr": 3.0, "input_lsd": 4.0, "input_lsd_hf": 6.0}
                 for k in (4, 8) for i in range(2)]
        settings = {s["key"]: s for s in ablation.eval_settings(grid)} | {
            s["key"]: s for s in (ablation.student_setting(n) for n in (1, 2, 4))}
        path = tmp_path / "cells" / cell["dir"] / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"cell": {k: v for k, v in cell.items() if k != "teacher"},
                                    "evals": {k: {**settings[k], "seconds": 1.0, "per_cutoff": [], "files": files}
                                              for k in setting_keys}}))

    teacher, student4 = teachers[0], next(s for s in students if s["teacher"]["name"] == teachers[0]["name"] and s["steps"] == 4)
    write(teacher, [s["key"] for s in ablation.eval_settings(grid) if ablation.applies(s, teacher)], 0.0)
    write(student4, ["student-4"], 0.25)
    res = ablation.run_student(grid, student4, tmp_path, {"dataset": None, "base": None, "inputs": None,
                                                          "references": None})  # finished: nothing to run
    assert set(res["evals"]) == {"student-4"}
    rows = ablation.collect(grid, tmp_path)
    assert {r["student"] for r in rows} == {None, 4}  # one column set for every row (the CSV)
    md = ablation.write_report(grid, tmp_path, rows).read_text()
    lsd_table = md.split("## LSD (")[1].split("##")[0]
    assert "| objective=diffusion, student=4 |" in lsd_table and "student-4" in lsd_table
    table = md.split("## Distilled students against their teacher (ddim-eta1-50)")[1]
    assert f"| {student4['name']} | +0.250 ± 0.000 |" in table and "0/4 |" in table
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
