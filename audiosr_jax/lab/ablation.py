"""Ablation harness: train one LDM per grid cell on the same data, seed and budget, evaluate each the same way,
and write one table and one plot.

    python ablate.py --grid=audiosr_jax/configs/ablations/schedule_x_param.py [--workdir=out/ablations/NAME]
        [--cell=NAME] [--report_only] [--grid.eval.clips=4 ...]

A grid config (``audiosr_jax/configs/ablations/*.py``) holds:

* ``base``: the demo's settings for the shared parts: ``corpus`` (a folder, or "" to build one), the frozen
  VAE and vocoder (trained with the demo's recipe into ``<workdir>/base`` unless ``base.workdir`` names a
  finished demo workdir), and ``ldm``: the LDM training overrides every cell shares (steps, batch, data seed).
* ``axes``: ``((dotted config key, (values, ...)), ...)``; the cells are their Cartesian product times ``seeds`` (each seed
  sets ``train.seed``: initialisation, noise and condition dropout; the batches are the same for every cell).
* ``eval``: ``cutoffs_hz``, ``clips`` (held-out 5.12 s clips of the validation split), ``guidance``, ``seed``,
  and ``samplers``: a list of ``{sampler, eta, steps: [..], only: {dotted key: [values]}}``; a cell is scored
  at every (sampler, steps) whose ``only`` (optional) it matches — e.g. ``midpoint`` only where
  ``ldm.objective`` is flow or bridge. Tables and plots count network evaluations (NFE), not steps.

* ``students`` (optional): ``teacher`` (((dotted key, value), ...) picking the teacher cells), ``steps`` (student
  step counts) and ``distill`` (overrides of ``configs/distill.py:tiny``, e.g. ``teacher_steps``,
  ``steps_per_round``): every teacher cell is distilled (progressive distillation, the distill stage) into one
  student per step count, scored at its own sampling (``ddim_progressive``, guidance 1), and compared paired
  with its teacher at ``compare_to`` (a setting key). The students of one teacher form a chain: the largest
  step count is distilled from the teacher cell, each smaller one from the next larger student (its guidance
  already baked in; ``teacher_steps`` = that student's steps), so 4-, 2- and 1-step students cost the rounds of
  the 1-step student alone.

Each cell lives in ``<workdir>/cells/<cell>/`` (``ldm/`` training run, ``checkpoint/`` export,
``outputs/<sampler>-<steps>/`` audio, ``results.json``). A cell whose ``results.json`` has every evaluation
is not rerun; a partly done cell resumes (training from its checkpoint, evaluation per setting). ``--cell``
runs one cell only, so cells can be separate processes (one per host or job); ``--report_only`` gathers the
finished cells into ``<workdir>/report.md``, ``results.csv`` and ``lsd_vs_steps.png``.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from audiosr_jax.audio import atomic_write
from audiosr_jax.lab import experiments as ex

TABLE_METRICS = ("lsd", "lsd_hf", "lsd_lf", "si_sdr")


def log(msg: str) -> None:
    print(f"[ablate] {msg}", flush=True)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def cells(grid: Any) -> list[dict]:
    """The grid's cells in order: ``{"name", "dir", "overrides"}`` (overrides: dotted keys → values)."""
    axes = [(k, list(v)) for k, v in grid.axes]
    out = []
    for values in itertools.product(*(v for _, v in axes)):
        for seed in grid.seeds:
            overrides = {k: v for (k, _), v in zip(axes, values)}
            overrides["train.seed"] = int(seed)
            name = ",".join(f"{_short(k)}={v}" for (k, _), v in zip(axes, values)) + f",seed={seed}"
            dirname = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(str(v) for v in values) + f"-s{seed}")
            out.append({"name": name, "dir": dirname, "overrides": overrides, "axes": dict(zip((k for k, _ in axes), values)),
                        "seed": int(seed)})
    return out


def network_calls(sampler: str, steps: int) -> int:
    """UNet evaluations of one run (before the guidance pair): the flow ODE's own samplers
    (`flow_samplers.num_calls`) where the sampler exists only there, else `sampling.num_network_calls`."""
    from audiosr_jax.diffusion import flow_samplers, sampling

    if sampler in sampling.FLOW_ONLY_SAMPLERS:
        return flow_samplers.num_calls(sampler, steps)
    return sampling.num_network_calls(sampler, steps)


def eval_settings(grid: Any) -> list[dict]:
    """Every (sampler, eta, steps) the cells are scored at, as dicts with a ``key`` like ``ddim-eta1-50``,
    ``calls`` (network evaluations) and ``only`` ({dotted key: [values]} a cell must match; {} = every cell)."""
    out = []
    for s in grid.eval.samplers:
        only = s.get("only") or {}
        only = {k: list(v) for k, v in (only.to_dict() if hasattr(only, "to_dict") else dict(only)).items()}
        for steps in s["steps"]:
            eta = float(s.get("eta", 1.0))
            key = f"{s['sampler']}-{steps}" if s["sampler"] != "ddim" else f"ddim-eta{eta:g}-{steps}"
            out.append({"key": key, "sampler": s["sampler"], "eta": eta, "steps": int(steps),
                        "calls": network_calls(s["sampler"], int(steps)), "only": only})
    return out


def applies(setting: dict, cell: dict) -> bool:
    """Whether ``cell`` is scored at ``setting`` (its axis values match the setting's ``only``)."""
    return all(cell["axes"].get(k, cell["overrides"].get(k)) in v for k, v in setting.get("only", {}).items())


def common_settings(grid: Any) -> list[dict]:
    """The settings every cell is scored at, by network evaluations (the paired comparisons use these)."""
    return sorted((s for s in eval_settings(grid) if all(applies(s, c) for c in cells(grid))),
                  key=lambda s: (s["calls"], s["key"]))


def prepare_base(grid: Any, workdir: Path) -> dict:
    """The dataset, frozen VAE and vocoder every cell shares, and the held-out inputs (built once)."""
    from audiosr_jax.lab import demo

    base = Path(grid.base.workdir) if grid.base.workdir else workdir / "base"
    base = base.resolve()
    corpus = Path(grid.base.corpus) if grid.base.corpus else demo.build_corpus(base / "corpus", Path(grid.base.cache),
                                                                                float(grid.base.minutes))
    dataset = demo.build_segments(corpus, base / "tfds")
    for stage in ("vae", "vocoder"):
        ex.train_stage(stage, base / stage, demo.stage_overrides(stage, base, dataset), say=log)
    refs, inputs = workdir / "heldout", workdir / "inputs"
    ex.held_out_clips(dataset, refs, int(grid.eval.clips))
    ex.simulate_inputs(refs, inputs, [int(c) for c in grid.eval.cutoffs_hz])
    return {"base": base, "dataset": dataset, "references": refs, "inputs": inputs}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def ldm_overrides(grid: Any, cell: dict, prepared: dict) -> dict:
    o = _flatten(grid.base.ldm.to_dict() if hasattr(grid.base.ldm, "to_dict") else grid.base.ldm)
    o.update(cell["overrides"])
    o["data.dataset_dir"] = str(prepared["dataset"])
    o["ldm.vae_from"] = str(prepared["base"] / "vae")
    return o


def run_cell(grid: Any, cell: dict, workdir: Path, prepared: dict) -> dict:
    """Train, export and evaluate one cell (each part skipped when done); returns its results dict."""
    from audiosr_jax.training.export import export_weights

    cdir = workdir / "cells" / cell["dir"]
    results_path = cdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    todo = [s for s in eval_settings(grid) if applies(s, cell) and s["key"] not in results.get("evals", {})]
    if not todo:
        log(f"{cell['name']}: done, skipped")
        return results
    t0 = time.perf_counter()
    last = ex.train_stage("ldm", cdir / "ldm", ldm_overrides(grid, cell, prepared), say=log)
    train_s = time.perf_counter() - t0
    ckpt = cdir / "checkpoint"
    if not (ckpt / "architecture.json").is_file():
        base = prepared["base"]
        export_weights(str(base / "vae"), str(cdir / "ldm"), str(base / "vocoder"), str(ckpt), use_ema=True)
    results.setdefault("cell", cell)
    results.setdefault("evals", {})
    if last:
        results["train"] = {"seconds": train_s, **{k: v for k, v in last.items() if isinstance(v, (int, float))}}
    for s in todo:
        _evaluate(grid, cell["name"], cdir, ckpt, s, prepared, results)
    return results


def _evaluate(grid: Any, name: str, cdir: Path, ckpt: Path, s: dict, prepared: dict, results: dict) -> None:
    """Sample the held-out inputs with checkpoint ``ckpt`` at setting ``s``, score them, and add the scores to
    ``results`` (saved to ``cdir/results.json`` at once, so a stopped run keeps every finished setting)."""
    t1 = time.perf_counter()
    out = cdir / "outputs" / s["key"]
    ex.super_resolve(ckpt, prepared["inputs"], out, steps=s["steps"],
                     guidance=float(s.get("guidance", grid.eval.guidance)), sampler=s["sampler"], eta=s["eta"],
                     seed=int(grid.eval.seed))
    rows = ex.score(out, prepared["references"], prepared["inputs"])
    results["evals"][s["key"]] = {**s, "seconds": time.perf_counter() - t1, "per_cutoff": ex.per_cutoff(rows),
                                  "files": [{k: r.get(k) for k in ("output", "cutoff_bucket_khz", *TABLE_METRICS,
                                                                    "input_lsd", "input_lsd_hf")} for r in rows]}
    atomic_write(cdir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2, default=str)))
    all_ = _mean_over_files(results["evals"][s["key"]]["files"])
    log(f"{name} {s['key']}: LSD {all_['lsd']:.3f}, LSD-HF {all_['lsd_hf']:.3f}, "
        f"SI-SDR {all_['si_sdr']:.2f} dB ({time.perf_counter() - t1:.0f} s)")


def student_setting(steps: int) -> dict:
    """How a distilled student is scored: its own grid (``ddim_progressive``), ``steps`` calls, no guidance."""
    return {"key": f"student-{steps}", "sampler": "ddim_progressive", "eta": 0.0, "steps": int(steps),
            "calls": int(steps), "only": {}, "guidance": 1.0}


def student_cells(grid: Any) -> list[dict]:
    """The students of ``grid.students`` (none without it): per teacher cell and step count, ``{"name", "dir",
    "teacher" (the cell), "steps", "axes" (the teacher's plus "student"), "seed", "overrides"}``."""
    spec = grid.get("students")
    if not spec:
        return []
    match = dict(spec.teacher)
    out = []
    for cell in cells(grid):
        if all(cell["axes"].get(k) == v for k, v in match.items()):
            chain = {}
            for n in sorted({int(n) for n in spec.steps}, reverse=True):
                base = ",".join(f"{_short(k)}={v}" for k, v in cell["axes"].items())
                chain[n] = {"name": f"{base},student={n},seed={cell['seed']}", "dir": f"{cell['dir']}-student{n}",
                            "teacher": cell, "steps": n, "axes": {**cell["axes"], "student": n},
                            "seed": cell["seed"], "overrides": {"train.seed": cell["seed"]},
                            "from": chain[min(chain)] if chain else None}
            out += [chain[int(n)] for n in spec.steps]
    return out


def distill_overrides(grid: Any, student: dict, workdir: Path, prepared: dict) -> dict:
    """The distill stage's overrides for ``student``: the grid's ``students.distill``, its teacher (the teacher
    cell's LDM run, or the next larger student's distill run: then ``teacher_steps`` is that student's steps and
    the guidance 1, as it is baked in), the student's step count, the shared dataset and VAE, the teacher's seed,
    and the whole schedule."""
    from audiosr_jax.configs import distill as distill_config
    from audiosr_jax.diffusion.progressive import num_rounds

    spec = grid.students
    o = {f"distill.{k}": v for k, v in _flatten(spec.get("distill", {}).to_dict()
                                                if hasattr(spec.get("distill", {}), "to_dict")
                                                else dict(spec.get("distill", {}))).items()}
    parent = student.get("from")
    if parent is not None:
        o.update({"distill.teacher": str(workdir / "cells" / parent["dir"] / "distill"),
                  "distill.teacher_steps": parent["steps"], "distill.guidance": 1.0})
    else:
        o["distill.teacher"] = str(workdir / "cells" / student["teacher"]["dir"] / "ldm")
    o.update({"distill.student_steps": student["steps"], "data.dataset_dir": str(prepared["dataset"]),
              "ldm.vae_from": str(prepared["base"] / "vae"), **student["overrides"]})
    d = distill_config.get_config("tiny").distill
    teacher_steps = int(o.get("distill.teacher_steps", d.teacher_steps))
    per_round = int(o.get("distill.steps_per_round", d.steps_per_round))
    o["train.total_steps"] = num_rounds(teacher_steps, student["steps"]) * per_round
    return o


def run_student(grid: Any, student: dict, workdir: Path, prepared: dict) -> dict:
    """Distil, export and score one student (each part skipped when done; its teacher cell is trained first
    if needed); returns its results dict."""
    from audiosr_jax.training.export import export_weights

    cdir = workdir / "cells" / student["dir"]
    results_path = cdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    s = student_setting(student["steps"])
    if s["key"] in results.get("evals", {}):
        log(f"{student['name']}: done, skipped")
        return results
    _train_teacher(grid, student, workdir, prepared)
    t0 = time.perf_counter()
    last = ex.train_stage("distill", cdir / "distill", distill_overrides(grid, student, workdir, prepared), say=log)
    ckpt = cdir / "checkpoint"
    if not (ckpt / "architecture.json").is_file():
        base = prepared["base"]
        export_weights(str(base / "vae"), str(cdir / "distill"), str(base / "vocoder"), str(ckpt), use_ema=True)
    results.setdefault("cell", {k: v for k, v in student.items() if k not in ("teacher", "from")})
    results.setdefault("evals", {})
    if last:
        results["train"] = {"seconds": time.perf_counter() - t0,
                            **{k: v for k, v in last.items() if isinstance(v, (int, float))}}
    _evaluate(grid, student["name"], cdir, ckpt, s, prepared, results)
    return results


def _train_teacher(grid: Any, student: dict, workdir: Path, prepared: dict) -> None:
    """Train what ``student`` distils from: its LDM cell, or the larger students of its chain, in order (each
    run skipped when finished)."""
    parent = student.get("from")
    if parent is None:
        teacher = student["teacher"]
        ex.train_stage("ldm", workdir / "cells" / teacher["dir"] / "ldm", ldm_overrides(grid, teacher, prepared),
                       say=log)
        return
    _train_teacher(grid, parent, workdir, prepared)
    ex.train_stage("distill", workdir / "cells" / parent["dir"] / "distill",
                   distill_overrides(grid, parent, workdir, prepared), say=log)


def _mean_over_files(files: list[dict]) -> dict:
    return {k: float(np.mean([f[k] for f in files if f.get(k) is not None])) for k in (*TABLE_METRICS, "input_lsd")}


def collect(grid: Any, workdir: Path) -> list[dict]:
    """One row per (cell, eval setting, cutoff or "all") over the finished evaluations; seeds are kept apart
    (rows carry ``seed``) and pooled in the report."""
    rows = []
    students = grid.get("students")
    for cell in cells(grid) + student_cells(grid):
        path = workdir / "cells" / cell["dir"] / "results.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        axes = {_short(k): v for k, v in cell["axes"].items()}
        if students:
            axes.setdefault("student", None)  # every row has the same columns
        for key, ev in res.get("evals", {}).items():
            files = ev["files"]
            for khz in sorted({f["cutoff_bucket_khz"] for f in files}) + ["all"]:
                fs = files if khz == "all" else [f for f in files if f["cutoff_bucket_khz"] == khz]
                row = {"cell": cell["name"], **axes, "seed": cell["seed"],
                       "setting": key, "sampler": ev["sampler"], "eta": ev["eta"], "steps": ev["steps"],
                       "calls": ev.get("calls", network_calls(ev["sampler"], ev["steps"])),
                       "cutoff_khz": khz, "n": len(fs)}
                for m in (*TABLE_METRICS, "input_lsd", "input_lsd_hf"):
                    vals = np.array([f[m] for f in fs if f.get(m) is not None], np.float64)
                    row[m] = float(vals.mean()) if vals.size else None
                    row[f"{m}_std"] = float(vals.std()) if vals.size else None
                rows.append(row)
    return rows


def _group_name(row: dict, axis_names: list[str]) -> str:
    return ", ".join(f"{a}={row[a]}" for a in axis_names if row.get(a) is not None)


def _axis_names(grid: Any) -> list[str]:
    return [_short(k) for k, _ in grid.axes] + (["student"] if grid.get("students") else [])


def write_report(grid: Any, workdir: Path, rows: list[dict]) -> Path:
    """``results.csv`` (every row), ``report.md`` (cells × settings, LSD pooled over cutoffs with the spread
    over seeds, then per cutoff at the largest step count) and ``lsd_vs_steps.png``."""
    axis_names = _axis_names(grid)
    csv_path = workdir / "results.csv"
    if rows:
        fields = list(rows[0].keys())

        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)

        atomic_write(csv_path, write_csv)
    students = student_cells(grid)
    all_settings = eval_settings(grid) + [student_setting(n) for n in sorted({c["steps"] for c in students})]
    settings = [s["key"] for s in sorted(all_settings, key=lambda s: (s["calls"], s["key"]))]
    present = {_group_name(r, axis_names) for r in rows}
    groups = list(dict.fromkeys(g for g in (_cell_group(c) for c in cells(grid) + students) if g in present))
    lines = [f"# Ablation: {grid.name}", "", grid.get("description", ""), "",
             f"Cells: {len(cells(grid))} ({' × '.join(f'{a} ({len(v)})' for a, v in zip(axis_names, (v for _, v in grid.axes)))}"
             f" × seeds {list(grid.seeds)}). Held-out: {grid.eval.clips} clips × cutoffs "
             f"{', '.join(f'{c / 1000:g}' for c in grid.eval.cutoffs_hz)} kHz; guidance {grid.eval.guidance}.", "",
             "## LSD (all cutoffs pooled; mean over clips, ± std over training seeds when there are several)", ""]
    lines += _pivot(rows, groups, settings, axis_names, "lsd", cutoff="all")
    lines += ["", "## LSD-HF (generated band only)", ""]
    lines += _pivot(rows, groups, settings, axis_names, "lsd_hf", cutoff="all")
    lines += ["", "## SI-SDR (dB)", ""]
    lines += _pivot(rows, groups, settings, axis_names, "si_sdr", cutoff="all", digits=2)
    common = [s["key"] for s in common_settings(grid)]
    if common:
        last = common[-1]
        lines += ["", f"## LSD per cutoff ({last}); baseline = the low-passed input", ""]
        cutoffs = sorted({r["cutoff_khz"] for r in rows if r["cutoff_khz"] != "all"})
        lines.append("| cell | " + " | ".join(f"{c:g} kHz" for c in cutoffs) + " |")
        lines.append("|---|" + "---|" * len(cutoffs))
        base_row = {c: [r["input_lsd"] for r in rows if r["cutoff_khz"] == c and r["setting"] == last] for c in cutoffs}
        lines.append("| low-passed input | " + " | ".join(f"{np.mean(base_row[c]):.3f}" if base_row[c] else "-"
                                                      for c in cutoffs) + " |")
        for g in groups:
            cellv = []
            for c in cutoffs:
                v = [r["lsd"] for r in rows if _group_name(r, axis_names) == g and r["cutoff_khz"] == c
                     and r["setting"] == last]
                cellv.append(_fmt(v))
            lines.append(f"| {g} | " + " | ".join(cellv) + " |")
    for key in common:
        lines += ["", f"## Paired differences against the first cell of the same seed ({key})", "",
                  "Same clips, cutoffs and sampler noise in every cell, so each file gives a paired difference "
                  "against the grid's first cell trained with the same seed (cell − that cell; negative LSD is "
                  "better). Mean ± standard error over files, and how many files the cell improves.", ""]
        lines += _paired_table(grid, workdir, key)
    if students:
        lines += ["", f"## Distilled students against their teacher ({grid.students.compare_to})", "",
                  "Each student against its own teacher cell on the same files (student − teacher; negative LSD "
                  "is better): mean ± standard error over files, and how many files the student improves.", ""]
        lines += _student_table(grid, workdir, students)
    lines += ["", "Files: `results.csv` (every cell × setting × cutoff, per seed), `lsd_vs_steps.png`.", ""]
    md = workdir / "report.md"
    atomic_write(md, lambda tmp: Path(tmp).write_text("\n".join(lines)))
    _plot(rows, groups, axis_names, workdir / "lsd_vs_steps.png")
    return md


def _files(workdir: Path, cell: dict, setting: str) -> dict | None:
    """{"<lpN>/<clip>": file scores} of one cell at one setting (None if not scored): outputs live under each
    cell's folder, so files pair across cells by their last two path parts."""
    path = workdir / "cells" / cell["dir"] / "results.json"
    ev = json.loads(path.read_text()).get("evals", {}).get(setting) if path.is_file() else None
    return {"/".join(Path(f["output"]).parts[-2:]): f for f in ev["files"]} if ev else None


def _paired_line(name: str, files: dict, ref: dict) -> str:
    """One table line: mean ± standard error of the per-file differences files − ref (LSD, LSD-HF, SI-SDR) and
    how many files improve LSD."""
    keys = sorted(set(files) & set(ref))
    cells_ = []
    for m in ("lsd", "lsd_hf", "si_sdr"):
        d = np.array([files[k][m] - ref[k][m] for k in keys if files[k].get(m) is not None
                      and ref[k].get(m) is not None], np.float64)
        se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
        cells_.append(f"{d.mean():+.3f} ± {se:.3f}" if d.size else "-")
    better = sum(files[k]["lsd"] < ref[k]["lsd"] for k in keys)
    return f"| {name} | " + " | ".join(cells_) + f" | {better}/{len(keys)} |"


def _paired_table(grid: Any, workdir: Path, setting: str) -> list[str]:
    """Each finished cell against the first finished cell of its seed (so a difference never mixes training
    seeds); seeds with a single finished cell give no row."""
    by_seed: dict[int, list] = {}
    for c in cells(grid):
        if f := _files(workdir, c, setting):
            by_seed.setdefault(c["seed"], []).append((c["name"], f))
    rows = [_paired_line(f"{name} (vs {group[0][0]})", files, group[0][1])
            for group in by_seed.values() for name, files in group[1:]]
    if not rows:
        return ["(needs two finished cells of one seed)"]
    return ["| cell (vs the first cell of its seed) | ΔLSD | ΔLSD-HF | ΔSI-SDR (dB) | files better (LSD) |",
            "|---|---|---|---|---|"] + rows


def _student_table(grid: Any, workdir: Path, students: list[dict]) -> list[str]:
    out = ["| student (vs its teacher) | ΔLSD | ΔLSD-HF | ΔSI-SDR (dB) | files better (LSD) |", "|---|---|---|---|---|"]
    for st in students:
        files = _files(workdir, st, student_setting(st["steps"])["key"])
        ref = _files(workdir, st["teacher"], str(grid.students.compare_to))
        if files and ref:
            out.append(_paired_line(st["name"], files, ref))
    return out if len(out) > 2 else ["(needs a finished student and its teacher)"]


def _cell_group(cell: dict) -> str:
    return ", ".join(f"{_short(k)}={v}" for k, v in cell["axes"].items())


def _fmt(vals: list, digits: int = 3) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def _pivot(rows, groups, settings, axis_names, metric, cutoff, digits=3) -> list[str]:
    present = [s for s in settings if any(r["setting"] == s for r in rows)]
    out = ["| cell | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for g in groups:
        vals = [_fmt([r[metric] for r in rows if _group_name(r, axis_names) == g and r["setting"] == s
                      and r["cutoff_khz"] == cutoff], digits) for s in present]
        out.append(f"| {g} | " + " | ".join(vals) + " |")
    return out


def _plot(rows, groups, axis_names, path: Path) -> None:
    """LSD and LSD-HF (all cutoffs pooled) against network evaluations: one colour per cell, one line style per
    sampler; error bars are the spread over training seeds. The baseline is in the titles, not on the axes
    (it is far above every cell and would flatten their differences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = [r for r in rows if r["cutoff_khz"] == "all"]
    samplers = sorted({(r["sampler"], r["eta"]) for r in pooled})
    if not samplers:
        return
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, metric, title in ((axes[0], "lsd", "LSD"), (axes[1], "lsd_hf", "LSD-HF")):
        for ci, g in enumerate(groups):
            for si, (sampler, eta) in enumerate(samplers):
                rs = [r for r in pooled if _group_name(r, axis_names) == g and (r["sampler"], r["eta"]) == (sampler, eta)]
                steps = sorted({r["calls"] for r in rs})
                if not steps:
                    continue
                vals = [[r[metric] for r in rs if r["calls"] == s] for s in steps]
                label = f"{g} · {sampler}" + (f" η={eta:g}" if sampler == "ddim" else "")
                ax.errorbar(steps, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], color=f"C{ci}",
                            ls=styles[si % len(styles)], marker="o", capsize=3, label=label)
        base = [r[f"input_{metric}"] for r in pooled if r.get(f"input_{metric}") is not None]
        ax.set_title(f"{title}, all cutoffs (low-passed input: {np.mean(base):.2f})" if base else title)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (UNet calls; a guidance pair counts once)")
        ax.set_ylabel(f"{title} (lower is better)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()

    def save(tmp):
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")

    atomic_write(path, save)
    plt.close(fig)


def run(grid: Any, workdir: Path, only_cell: str | None = None, report_only: bool = False) -> Path:
    """Run every (or one) cell of the grid in sequence, then write the report; returns report.md's path."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    grid_cells = cells(grid)
    named = grid_cells + student_cells(grid)
    if only_cell is not None and only_cell not in {c["name"] for c in named} | {c["dir"] for c in named}:
        raise SystemExit(f"error: no cell {only_cell!r} in {grid.name}; cells: "
                         + "; ".join(c["name"] for c in named))
    atomic_write(workdir / "grid.json", lambda tmp: Path(tmp).write_text(grid.to_json(indent=2)))
    if not report_only:
        prepared = prepare_base(grid, workdir)
        for cell in grid_cells:
            if only_cell in (None, cell["name"], cell["dir"]):
                run_cell(grid, cell, workdir, prepared)
        for student in student_cells(grid):
            if only_cell in (None, student["name"], student["dir"]):
                run_student(grid, student, workdir, prepared)
    rows = collect(grid, workdir)
    md = write_report(grid, workdir, rows)
    done = {r["cell"] for r in rows}
    students = student_cells(grid)
    log(f"report: {md} ({len(done & {c['name'] for c in grid_cells})}/{len(grid_cells)} cells"
        + (f", {len(done & {s['name'] for s in students})}/{len(students)} students" if students else "")
        + " finished)")
    return md


__all__ = ["cells", "eval_settings", "applies", "common_settings", "network_calls", "student_cells",
           "student_setting", "distill_overrides", "prepare_base", "run_cell", "run_student", "collect",
           "write_report", "run"]
