"""Building blocks of end-to-end experiments (the demo, the ablation harness): train a stage from a preset
with overrides, cut held-out clips, super-resolve them at several cutoffs and score them per cutoff.

Every function is idempotent on its output folder (a finished step is skipped, training resumes from its last
checkpoint), so an interrupted experiment is rerun with the same command.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

SR = 48_000
CLIP_SECONDS = 5.12
CUTOFFS_HZ = (2000, 4000, 8000, 12000)
REPO = Path(__file__).resolve().parents[2]  # the checkout (data/ scripts)


def log(msg: str) -> None:
    print(f"[audiosr-jax] {msg}", flush=True)


def latest_step(workdir: Path) -> int:
    """Largest committed checkpoint step under ``workdir/checkpoints`` (0 when none)."""
    ckpts = Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
    return max(steps, default=0)


def stage_config(stage: str, overrides: dict, preset: str = "tiny"):
    """``audiosr_jax/configs/<stage>.py:<preset>`` with dotted-key overrides applied (an ml_collections.ConfigDict)."""
    cfg = importlib.import_module(f"audiosr_jax.configs.{stage}").get_config(preset)
    cfg.update_from_flattened_dict(dict(overrides))
    return cfg


def command_line(stage: str, workdir: Path, overrides: dict, preset: str = "tiny") -> str:
    """The ``train.py`` command that trains the same run."""
    flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
    return f"python train.py --config=audiosr_jax/configs/{stage}.py:{preset} --workdir={workdir} {flags}"


def train_stage(stage: str, workdir: Path, overrides: dict, preset: str = "tiny", say: Callable = log) -> dict:
    """Train (or resume, or skip when finished) one stage in ``workdir``; returns the last logged metrics
    ({} when skipped)."""
    from audiosr_jax.training.loop import train

    workdir = Path(workdir)
    cfg = stage_config(stage, overrides, preset)
    total = int(cfg.train.total_steps)
    done = latest_step(workdir)
    if done >= total:
        say(f"{stage}: {workdir} is at step {done}, reused")
        return {}
    say(f"{stage}: training {total} steps{f' (resuming at {done})' if done else ''}:\n  "
        + command_line(stage, workdir, overrides, preset))
    t0 = time.perf_counter()
    last = train(cfg, str(workdir))
    evals = {k: v for k, v in last.items() if k.startswith("eval/")}
    say(f"{stage}: done in {time.perf_counter() - t0:.0f} s; last eval "
        + ", ".join(f"{k[5:]} {v:.4g}" for k, v in sorted(evals.items())))
    return last


def held_out_clips(dataset: Path, out: Path, count: int, seconds: float = CLIP_SECONDS) -> list[Path]:
    """Write up to ``count`` clips of the dataset's validation split (48 kHz float WAV) into ``out``.

    A clip is the first ``seconds`` of a validation segment with that much real (unpadded) audio whose RMS
    is above −40 dBFS; domains are taken in turn, one clip per source file before any file gives a second.
    Returns the paths, in a deterministic order.
    """
    import soundfile as sf

    from audiosr_jax.audio import atomic_write
    from audiosr_jax.data.segments import DOMAINS, open_split

    n = int(round(seconds * SR))
    src = open_split(dataset, "validation")
    by_domain: dict[str, list] = {}
    for i in range(len(src)):
        ex = src[i]
        if int(ex["valid_samples"]) < n:
            continue
        x = ex["audio"][:n].astype(np.float32) / 32768.0
        if np.sqrt(np.mean(x ** 2)) < 0.01:
            continue
        domain = DOMAINS[int(ex["domain"])]
        name = f"{domain}_{Path(ex['source'].decode()).stem}_{int(ex['offset']) // SR:04d}s"
        by_domain.setdefault(domain, []).append((ex["source"], name, x))
    picked: list[tuple[str, np.ndarray]] = []
    used: set = set()
    for fresh_only in (True, False):
        queues = [list(v) for _, v in sorted(by_domain.items())]
        while len(picked) < count and any(queues):
            for q in queues:
                while q and len(picked) < count:
                    source, name, x = q.pop(0)
                    if (fresh_only and source in used) or any(p[0] == name for p in picked):
                        continue
                    picked.append((name, x))
                    used.add(source)
                    break
    if not picked:
        raise SystemExit(f"error: the validation split of {dataset} has no non-silent clip of {seconds} s")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, x in picked:
        path = out / f"{name}.wav"
        if not path.is_file():
            atomic_write(path, lambda tmp, x=x: sf.write(tmp, x, SR, subtype="FLOAT", format="WAV"))
        paths.append(path)
    return paths


def simulate_inputs(references: Path, inputs: Path, cutoffs_hz: Iterable[int] = CUTOFFS_HZ) -> None:
    """Low-pass every reference at every cutoff into ``inputs/lp<N>/`` (skipped when its manifest exists)."""
    from audiosr_jax import evaluation as ev

    if not (Path(inputs) / ev.MANIFEST).is_file():
        ev.simulate(str(references), str(inputs), [float(c) for c in cutoffs_hz])


def super_resolve(checkpoint: Path, inputs: Path, outputs: Path, *, steps: int = 50, guidance: float = 3.5,
                  sampler: str = "ddim", eta: float = 1.0, seed: int = 0, batch_size: int = 4,
                  dtype: str = "float32") -> None:
    """``sample.py INPUTS -o OUTPUTS`` with loudness matched to each input (finished outputs are skipped).

    ``dtype`` is the networks' compute dtype (``--dtype``: "float32" or "bfloat16"; params stay float32).
    """
    from audiosr_jax import AudioSR

    outcome = AudioSR.from_pretrained(str(checkpoint)).super_resolve_files(
        [str(inputs)], str(outputs), seed=seed, batch_size=batch_size, match_loudness=True, progress=False,
        lowpass="ellip", steps=steps, guidance=guidance, sampler=sampler, eta=eta, dtype=dtype)  # as the reports
    failed = [r.reason for r in outcome.results if r.status == "failed"]
    if failed or outcome.stopped:
        raise SystemExit(f"error: super-resolution failed: {outcome.stopped or failed[0]} "
                         f"({len(failed)} files; see {Path(outputs) / 'report.json'})")


def score(outputs: Path, references: Path, inputs: Path, png_dir: Path | None = None) -> list[dict]:
    """Per-file scores (``audiosr_jax.evaluation`` rows, with the low-passed input's own LSDs as the baseline)."""
    from audiosr_jax import evaluation as ev

    report = ev.evaluate(str(outputs), str(references), str(inputs), png_dir=str(png_dir) if png_dir else None)
    if report.problems:
        raise SystemExit("error: evaluation problems:\n  " + "\n  ".join(report.problems))
    return report.rows


PER_CUTOFF_METRICS = ("lsd", "input_lsd", "lsd_hf", "input_lsd_hf", "lsd_lf", "si_sdr")


def per_cutoff(rows: list[dict]) -> list[dict]:
    """Per cutoff bucket (kHz): n, mean and std over files of ``PER_CUTOFF_METRICS``, and ``beats_baseline``
    (mean LSD of the outputs below the mean LSD of the low-passed inputs)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    table = []
    for khz in sorted({r["cutoff_bucket_khz"] for r in ok}):
        rs = [r for r in ok if r["cutoff_bucket_khz"] == khz]
        entry: dict = {"cutoff_khz": khz, "n": len(rs)}
        for k in PER_CUTOFF_METRICS:
            vals = np.array([r[k] for r in rs if r.get(k) is not None], np.float64)
            entry[k] = float(vals.mean()) if vals.size else None
            entry[f"{k}_std"] = float(vals.std()) if vals.size else None
        entry["beats_baseline"] = (entry["lsd"] is not None and entry["input_lsd"] is not None
                                   and entry["lsd"] < entry["input_lsd"])
        table.append(entry)
    return table


def format_per_cutoff(table: list[dict]) -> str:
    """The per-cutoff table as aligned text, model next to baseline."""
    head = ("cutoff    n   LSD model   LSD input  LSD-HF model  LSD-HF input  LSD-LF model  SI-SDR (dB)  "
            "beats input")
    lines = [head, "-" * len(head)]
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for e in table:
        lines.append(f"{e['cutoff_khz']:>3g} kHz {e['n']:>3}  {f(e['lsd']):>10}  {f(e['input_lsd']):>10}  "
                     f"{f(e['lsd_hf']):>12}  {f(e['input_lsd_hf']):>12}  {f(e['lsd_lf']):>12}  "
                     f"{f(e['si_sdr'], 2):>11}  {'yes' if e['beats_baseline'] else 'NO'}")
    lines.append("LSD: ssr_eval (AudioSR/NVSR). LSD-HF / LSD-LF: NU-Wave 2, above / below the cutoff. 'input': the "
                 "low-passed input itself (the do-nothing baseline). Mean over clips.")
    return "\n".join(lines)
