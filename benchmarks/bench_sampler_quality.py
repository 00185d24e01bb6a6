"""Sampler quality at equal footing: steps × sampler × dtype → LSD (and this machine's time) on a trained model.

    python benchmarks/bench_sampler_quality.py --checkpoint /tmp/demo1/checkpoint --references /tmp/demo1/heldout
    python benchmarks/bench_sampler_quality.py --checkpoint DIR --references DIR --settings ddim:50,dpmpp_2m:10 \\
        --cutoffs 4000,8000 --workdir out/sq_small

The references (48 kHz full-band clips) are low-passed at every cutoff (``experiments.simulate_inputs``, once,
into ``<workdir>/inputs``), super-resolved by ``sample.py`` once per setting (``experiments.super_resolve``:
guidance ``--guidance``, DDIM η 1 as the reference, loudness matched, the same ``--seed`` everywhere) into
``<workdir>/outputs/<sampler>-<steps>-<dtype>/`` and scored against the references (``experiments.score``).
Each finished setting keeps its scores in ``scores.json`` beside its outputs, so a rerun skips both the
sampling and the scoring of what is done (an interrupted setting resumes: sample.py skips finished files).

Per setting: LSD, LSD-HF, LSD-LF and SI-SDR pooled over every clip × cutoff; the UNet evaluations per window
(DDIM/DPM-Solver++(2M)/UniPC/Euler: steps, Heun: 2·steps − 1; each one batched classifier-free-guidance call,
conditional and unconditional together); the wall seconds of the sample.py run on this machine (including
XLA compilation or the persistent-cache load: not a throughput figure); and the paired per-file difference in
LSD against ``--baseline`` (the reference's setting, DDIM 50): same clips, cutoffs and noise seed, so
mean ± standard error over files. The verdict is "equal quality" when |mean ΔLSD| ≤ 0.05 (issue 3's bar).

Writes ``<workdir>/sampler_quality.md`` (the tables, with the command and the run's context) and
``<workdir>/sampler_quality.csv`` (one row per setting plus the low-passed input, the do-nothing baseline).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from audiosr_jax.lab import experiments as ex  # noqa: E402
from audiosr_jax.audio import atomic_write  # noqa: E402

DEFAULT_SETTINGS = ("ddim:50,ddim:50:bfloat16,ddim:25,ddim:10,dpmpp_2m:10,dpmpp_2m:20,unipc:10,unipc:20,"
                    "euler:25,heun:13")
DTYPES = ("float32", "bfloat16")
EQUAL_LSD = 0.05  # issue 3: "equal quality" = mean LSD within 0.05 of the reference's setting
METRICS = ("lsd", "lsd_hf", "lsd_lf", "si_sdr")
FILE_KEYS = ("output", "cutoff_bucket_khz", *METRICS, "input_lsd", "input_lsd_hf", "input_lsd_lf")
SCORES = "scores.json"


def log(msg: str) -> None:
    print(f"[bench_sampler_quality] {msg}", flush=True)


def parse_setting(text: str) -> dict:
    """``sampler:steps[:dtype]`` → {"sampler", "steps", "dtype", "key"} (key: the outputs folder name)."""
    from audiosr_jax.diffusion.sampling import SAMPLERS

    parts = text.strip().split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"error: setting {text!r}: expected sampler:steps[:dtype]")
    sampler, steps, dtype = parts[0], parts[1], parts[2] if len(parts) == 3 else "float32"
    if sampler not in SAMPLERS:
        raise SystemExit(f"error: setting {text!r}: unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    if not steps.isdigit() or int(steps) < 1:
        raise SystemExit(f"error: setting {text!r}: steps must be a positive integer")
    if dtype not in DTYPES:
        raise SystemExit(f"error: setting {text!r}: dtype must be one of {', '.join(DTYPES)}")
    return {"sampler": sampler, "steps": int(steps), "dtype": dtype, "key": f"{sampler}-{int(steps)}-{dtype}"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="audiosr-jax checkpoint directory")
    ap.add_argument("--references", required=True, help="folder of 48 kHz full-band reference clips")
    ap.add_argument("--workdir", default="out/bench_sampler_quality")
    ap.add_argument("--cutoffs", default="2000,4000,8000,12000", help="low-pass cutoffs in Hz")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma list of sampler:steps[:dtype]")
    ap.add_argument("--baseline", default="ddim:50", help="the setting the others are paired against")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=3.5)
    ap.add_argument("--batch-size", type=int, default=4, help="sample.py --batch-size (windows per device)")
    return ap.parse_args(argv)


def num_timesteps(checkpoint: Path) -> int:
    """The UNet's training timesteps from architecture.json (the release's 1000 when it has no diffusion entry)."""
    try:
        arch = json.loads((Path(checkpoint) / "architecture.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {checkpoint}: cannot read architecture.json ({e})") from None
    return int(arch.get("diffusion", {}).get("num_timesteps", 1000))


def unet_calls(setting: dict, timesteps: int) -> int:
    """UNet evaluations per window (each one batched CFG call: conditional and unconditional together)."""
    from audiosr_jax.diffusion.sampling import num_network_calls

    return num_network_calls(setting["sampler"], setting["steps"], timesteps)


def _check_inputs(inputs: Path, references: Path, cutoffs: list[int]) -> None:
    """Simulated inputs of an earlier run must be of these references and cutoffs (else they would be scored
    against the wrong clips)."""
    from audiosr_jax import evaluation as ev

    m = json.loads((inputs / ev.MANIFEST).read_text())
    if (sorted(float(c) for c in m.get("cutoffs_hz", [])) != sorted(float(c) for c in cutoffs)
            or os.path.abspath(m.get("references", "")) != os.path.abspath(references)):
        raise SystemExit(f"error: {inputs} holds inputs of {m.get('references')} at {m.get('cutoffs_hz')} Hz, not "
                         f"of {references} at {cutoffs} Hz; use another --workdir")


def run_setting(setting: dict, args: argparse.Namespace, workdir: Path, context: dict) -> dict:
    """Sample and score one setting, or load its finished scores; returns the scores dict."""
    out = workdir / "outputs" / setting["key"]
    path = out / SCORES
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("context") != context:
            raise SystemExit(f"error: {path} was made with {done.get('context')}, not {context}; "
                             "use another --workdir")
        log(f"{setting['key']}: scored earlier, reused")
        return done
    existing = len(list(out.rglob("*.wav"))) if out.is_dir() else 0
    log(f"{setting['key']}: sampling{f' (resuming: {existing} outputs exist)' if existing else ''}")
    t0 = time.perf_counter()
    ex.super_resolve(Path(args.checkpoint), workdir / "inputs", out, steps=setting["steps"], guidance=args.guidance,
                     sampler=setting["sampler"], seed=args.seed, batch_size=args.batch_size, dtype=setting["dtype"])
    wall = time.perf_counter() - t0
    rows = ex.score(out, Path(args.references), workdir / "inputs")
    files = [{k: r.get(k) for k in FILE_KEYS} for r in rows if r.get("status") == "ok"]
    for f in files:  # pair across settings by <lpN>/<clip>, not by the per-setting folder
        f["output"] = Path(f["output"]).resolve().relative_to(out.resolve()).as_posix()
    result = {"setting": setting, "context": context, "wall_s": wall, "resumed": existing > 0,
              "files": sorted(files, key=lambda f: f["output"])}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return result


def _mean(files: list[dict], key: str) -> float | None:
    vals = [f[key] for f in files if f.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def paired(files: list[dict], base: list[dict], key: str = "lsd") -> tuple[float, float, int]:
    """Mean and standard error (ddof 1; 0 for one file) of ``files − base`` over the files both have."""
    b = {f["output"]: f[key] for f in base if f.get(key) is not None}
    d = np.array([f[key] - b[f["output"]] for f in files if f.get(key) is not None and f["output"] in b], np.float64)
    if not d.size:
        return float("nan"), float("nan"), 0
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se, int(d.size)


def verdict(mean_diff: float) -> str:
    if not np.isfinite(mean_diff):
        return "-"
    if abs(mean_diff) <= EQUAL_LSD:
        return "equal quality"
    return "better" if mean_diff < 0 else "worse"


def summarize(results: list[dict], baseline_key: str, timesteps: int) -> list[dict]:
    """One row per setting (in the given order) with the pooled means, UNet calls, time and paired ΔLSD."""
    base = next(r for r in results if r["setting"]["key"] == baseline_key)
    base_calls = unet_calls(base["setting"], timesteps)
    rows = []
    for r in results:
        s, files = r["setting"], r["files"]
        d, se, n_pair = paired(files, base["files"])
        calls = unet_calls(s, timesteps)
        rows.append({"setting": s["key"], "sampler": s["sampler"], "steps": s["steps"], "dtype": s["dtype"],
                     "unet_calls": calls, "calls_speedup": base_calls / calls, "n": len(files),
                     **{m: _mean(files, m) for m in METRICS},
                     "dlsd_mean": d, "dlsd_se": se, "dlsd_n": n_pair, "verdict": verdict(d),
                     "wall_s_incl_compile": r["wall_s"], "resumed": r["resumed"]})
    return rows


def input_row(results: list[dict]) -> dict:
    """The low-passed inputs' own scores (the do-nothing baseline), from the first setting's files."""
    files = results[0]["files"]
    return {"setting": "low-passed input", "n": len(files), "lsd": _mean(files, "input_lsd"),
            "lsd_hf": _mean(files, "input_lsd_hf"), "lsd_lf": _mean(files, "input_lsd_lf")}


def _f(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def markdown_table(rows: list[dict], inp: dict, baseline_key: str) -> str:
    head = ("| setting | UNet calls / window | calls vs baseline | LSD | LSD-HF | LSD-LF | SI-SDR (dB) | "
            f"ΔLSD vs {baseline_key} (mean ± SE) | verdict | sample.py wall s (incl. compile) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        base = " (baseline)" if r["setting"] == baseline_key else ""
        wall = _f(r["wall_s_incl_compile"], 0) + (" (resumed)" if r["resumed"] else "")
        lines.append(f"| {r['setting']}{base} | {r['unet_calls']} | {r['calls_speedup']:.1f}× | {_f(r['lsd'])} | "
                     f"{_f(r['lsd_hf'])} | {_f(r['lsd_lf'])} | {_f(r['si_sdr'], 2)} | "
                     f"{r['dlsd_mean']:+.3f} ± {r['dlsd_se']:.3f} | {r['verdict']} | {wall} |")
    lines.append(f"| {inp['setting']} (do nothing) | 0 | - | {_f(inp['lsd'])} | {_f(inp['lsd_hf'])} | "
                 f"{_f(inp['lsd_lf'])} | - | - | - | - |")
    return "\n".join(lines)


def per_cutoff_table(results: list[dict]) -> str:
    """Mean LSD per setting and cutoff bucket, with the low-passed input's."""
    cutoffs = sorted({f["cutoff_bucket_khz"] for r in results for f in r["files"]})
    lines = ["| setting | " + " | ".join(f"{c:g} kHz" for c in cutoffs) + " |", "|---|" + "---:|" * len(cutoffs)]
    for r in results:
        cells = [_f(_mean([f for f in r["files"] if f["cutoff_bucket_khz"] == c], "lsd")) for c in cutoffs]
        lines.append(f"| {r['setting']['key']} | " + " | ".join(cells) + " |")
    files = results[0]["files"]
    cells = [_f(_mean([f for f in files if f["cutoff_bucket_khz"] == c], "input_lsd")) for c in cutoffs]
    lines.append("| low-passed input | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(workdir: Path, rows: list[dict], inp: dict, results: list[dict], args, command: str,
                  timesteps: int) -> tuple[Path, Path, str]:
    table = markdown_table(rows, inp, args.baseline_key)
    n_clips = len({Path(f["output"]).name for f in results[0]["files"]})
    md = [f"# Sampler quality: {args.checkpoint}", "",
          f"Command: `{command}`", "",
          f"{n_clips} clips × cutoffs {args.cutoffs} Hz from {args.references}; guidance {args.guidance}, DDIM η 1, "
          f"seed {args.seed}, sample.py --batch-size {args.batch_size}, {timesteps} training timesteps. "
          f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"{_backend()}).", "",
          "## All cutoffs pooled", "", table, "",
          "LSD: ssr_eval (AudioSR/NVSR); LSD-HF / LSD-LF: NU-Wave 2, above / below the cutoff; mean over every "
          "clip × cutoff. UNet calls: network evaluations per window, each one batched classifier-free-guidance "
          "call; 'calls vs baseline' is the baseline's calls over the setting's (the sampling-loop speed-up at "
          "equal cost per call; bfloat16's own speed depends on the hardware). ΔLSD: paired per-file difference "
          f"(setting − {args.baseline_key}; negative is better), mean ± standard error over files; 'equal quality' "
          f"when |mean| ≤ {EQUAL_LSD}. Wall seconds: the whole sample.py run on this machine, including XLA "
          "compilation (or the persistent-cache load) and VAE/vocoder work, with whatever else ran on the "
          "machine: not a throughput measurement.", "",
          "## LSD per cutoff", "", per_cutoff_table(results), ""]
    md_path, csv_path = workdir / "sampler_quality.md", workdir / "sampler_quality.csv"
    atomic_write(md_path, lambda tmp: Path(tmp).write_text("\n".join(md)))
    fields = list(rows[0].keys())

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)
            w.writerow(inp)

    atomic_write(csv_path, write_csv)
    return md_path, csv_path, table


def _backend() -> str:
    import jax

    d = jax.devices()
    return f"JAX {d[0].platform} × {len(d)}"


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/bench_sampler_quality.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    settings = [parse_setting(t) for t in args.settings.split(",") if t.strip()]
    baseline = parse_setting(args.baseline)
    args.baseline_key = baseline["key"]
    if baseline["key"] not in [s["key"] for s in settings]:
        settings.insert(0, baseline)  # the paired differences need it
    if len({s["key"] for s in settings}) != len(settings):
        raise SystemExit("error: --settings lists a setting twice")
    try:
        cutoffs = [int(c) for c in args.cutoffs.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"error: --cutoffs must be a comma list of integers (Hz), got {args.cutoffs!r}") from None
    if not cutoffs:
        raise SystemExit("error: --cutoffs is empty")
    timesteps = num_timesteps(Path(args.checkpoint))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ex.simulate_inputs(Path(args.references), workdir / "inputs", cutoffs)
    _check_inputs(workdir / "inputs", Path(args.references), cutoffs)
    # what the cached scores depend on (settings aside): a change makes them stale
    context = {"checkpoint": os.path.abspath(args.checkpoint), "references": os.path.abspath(args.references),
               "guidance": args.guidance, "seed": args.seed}

    t0 = time.perf_counter()
    results = []
    for s in settings:
        r = run_setting(s, args, workdir, context)
        results.append(r)
        log(f"{s['key']}: LSD {_mean(r['files'], 'lsd'):.3f} over {len(r['files'])} files "
            f"(sample.py {r['wall_s']:.0f} s incl. compile)")
    rows = summarize(results, baseline["key"], timesteps)
    inp = input_row(results)
    md_path, csv_path, table = write_reports(workdir, rows, inp, results, args, command, timesteps)
    print(table)
    print(f"\nlow-passed input (do nothing): LSD {_f(inp['lsd'])}, LSD-HF {_f(inp['lsd_hf'])}, "
          f"LSD-LF {_f(inp['lsd_lf'])}")
    log(f"{len(settings)} settings in {time.perf_counter() - t0:.0f} s; report {md_path}, {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
