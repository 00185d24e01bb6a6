"""The evaluation of a folder of outputs (`evaluate`) and its report: per-file rows, the per-cutoff table, CSV and
JSON."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys

import numpy as np

from audiosr_jax import metrics
from audiosr_jax.audio import atomic_write
from audiosr_jax.errors import AudioError, UserError
from audiosr_jax.evaluation.pairing import (
    DEFAULT_SUFFIXES,
    MANIFEST,
    load_manifest,
    plan_pairs,
)
from audiosr_jax.evaluation.scoring import (
    CSV_FIELDS,
    EVAL_SR,
    bucket_khz,
    evaluate_file,
)

TABLE_METRICS = (("lsd", "LSD"), ("lsd_hf", "LSD-HF"), ("lsd_lf", "LSD-LF"), ("si_sdr", "SI-SDR"))


@dataclasses.dataclass
class Report:
    """Result of :func:`evaluate`: one row per output (dicts with the ``CSV_FIELDS`` keys), the per-cutoff
    table (:func:`summarize`), problems (one line each; they make the exit status 1) and warnings."""

    rows: list[dict]
    table: list[dict]
    problems: list[str]
    warnings: list[str]
    settings: dict

    def to_json(self) -> dict:
        return {"settings": self.settings, "table": self.table, "files": self.rows, "problems": self.problems,
                "warnings": self.warnings}


def evaluate(
    outputs: str,
    references: str,
    inputs: str | None = None,
    *,
    manifest: str | None = None,
    png_dir: str | None = None,
    png_seconds: float = 30.0,
    bucket_width_khz: float = 1.0,
    max_length_diff_s: float = 0.1,
    suffixes=DEFAULT_SUFFIXES,
    progress: bool = False,
    within_reference_band: bool = True,
) -> Report:
    """Pair and score every output (see the module docstring for the pairing and cutoff rules).

    Args:
      outputs, references: folders (searched recursively). inputs: optional folder of the model's inputs
        (a ``manifest.json`` there is used unless ``manifest`` names another file).
      png_dir: write ``<png_dir>/<output relative path>.png`` per file.
      bucket_width_khz: width of the cutoff buckets of the table.
      within_reference_band: score a reference narrower than 24 kHz within its own measured band
        (``scoring.evaluate_file``); False scores every bin, as the published metrics.
    Returns:
      a :class:`Report`. Unusable files / metrics become ``status="failed"`` rows and problems; nothing raises
      for a single bad file.
    Raises:
      UserError: a folder that does not exist, an unreadable manifest.
    """
    for name, folder in (("--outputs", outputs), ("--references", references), ("--inputs", inputs)):
        if folder is not None and not os.path.isdir(folder):
            raise UserError(f"{folder}: {name} folder does not exist")
    if manifest is None and inputs is not None and os.path.isfile(os.path.join(inputs, MANIFEST)):
        manifest = os.path.join(inputs, MANIFEST)
    man = load_manifest(manifest) if manifest else None
    if man is not None and inputs is not None:
        man["_dir"] = inputs
    problems: list[str] = []
    warnings: list[str] = []
    plan = plan_pairs(outputs, references, inputs, man, suffixes, problems, warnings)
    rows = []
    items = plan
    if progress:
        from tqdm import tqdm

        items = tqdm(plan, desc="evaluate", unit="file", file=sys.stderr, leave=False, disable=None)
    for out, ref, inp, cutoff, source, key in items:
        png = os.path.join(png_dir, key + ".png") if png_dir else None
        try:
            row = evaluate_file(out, ref, inp, cutoff, source, png=png, png_seconds=png_seconds,
                                max_length_diff_s=max_length_diff_s, warnings=warnings,
                                within_reference_band=within_reference_band)
        except (AudioError, metrics.MetricError) as e:
            msg = str(e) if isinstance(e, AudioError) else f"{out}: {e}"
            problems.append(msg)
            row = dict.fromkeys(CSV_FIELDS)
            row.update(output=out, reference=ref, input=inp, status="failed", error=msg, cutoff_hz=cutoff,
                       cutoff_source=source if cutoff is not None else None)
        row["cutoff_bucket_khz"] = bucket_khz(row["cutoff_hz"], bucket_width_khz)
        rows.append(row)
    settings = {
        "outputs": outputs, "references": references, "inputs": inputs, "manifest": manifest,
        "sample_rate": EVAL_SR, "bucket_width_khz": bucket_width_khz,
        "metrics": {
            "lsd": "ssr_eval 0.0.7 AudioMetrics.lsd (AudioSR/NVSR): n_fft 2229, hop 480, librosa.stft zero pad",
            "lsd_hf/lsd_lf/lsd_nuwave2": "NU-Wave 2 for_test.py: n_fft 2048, hop 512, log10(max(|X|^2,1e-8)), "
                                         "split bin int(1025*2*cutoff/48000)",
            "lsd_energy_scaled": "ssr_eval LSD after matching the lowest 10% of bins (AudioSR README 2025-06)",
            "si_sdr": "10 log10(|a s|^2/|a s - est|^2), a=<est,s>/|s|^2, clipped to +-100 dB",
            "snr": "20 log10(|s|/|est - s|) (NU-Wave 2 / AP-BWE), clipped to +-100 dB",
        },
    }
    return Report(rows, summarize(rows), problems, warnings, settings)


def summarize(rows: list[dict]) -> list[dict]:
    """Per-cutoff-bucket statistics of the ``ok`` rows, buckets ascending, then "unknown", then "all".

    Returns: dicts ``{"cutoff_khz": label, "n": files, "<metric>_mean": ..., "<metric>_std": ...,
    "<metric>_n": ...}`` for the ``TABLE_METRICS`` (mean / std over the files that have the metric, std
    with ddof 0; None when no file has it).
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    groups: dict = {}
    for r in ok:
        groups.setdefault(r.get("cutoff_bucket_khz"), []).append(r)
    order = sorted(k for k in groups if k is not None) + ([None] if None in groups else [])
    table = []
    for label, members in [(k, groups[k]) for k in order] + ([("all", ok)] if ok else []):
        entry = {"cutoff_khz": "unknown" if label is None else (label if label == "all" else f"{label:g}"),
                 "n": len(members)}
        for name, _ in TABLE_METRICS:
            vals = np.array([r[name] for r in members if r.get(name) is not None], dtype=np.float64)
            entry[f"{name}_n"] = int(vals.size)
            entry[f"{name}_mean"] = float(vals.mean()) if vals.size else None
            entry[f"{name}_std"] = float(vals.std()) if vals.size else None
        table.append(entry)
    return table


def format_table(table: list[dict]) -> str:
    """The per-cutoff table as aligned text (one row per bucket, mean ± std)."""
    headers = ["cutoff (kHz)", "n"] + [title for _, title in TABLE_METRICS]
    lines = []
    for entry in table:
        cells = [str(entry["cutoff_khz"]), str(entry["n"])]
        for name, _ in TABLE_METRICS:
            mean, std = entry[f"{name}_mean"], entry[f"{name}_std"]
            digits = 2 if name == "si_sdr" else 3
            cells.append("-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines]
    out.append("LSD: ssr_eval (AudioSR/NVSR; n_fft 2229, hop 480). LSD-HF / LSD-LF: NU-Wave 2 (n_fft 2048, hop 512)"
               " above / below the cutoff. SI-SDR in dB. mean ± std over files.")
    return "\n".join(out)


def _clean(v):
    # JSON / CSV friendly, recursively: numpy scalars to Python, non-finite floats to None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_csv(rows: list[dict], path: str) -> None:
    """One line per output file with the ``CSV_FIELDS`` columns (empty cells for metrics that do not apply)."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if _clean(r.get(k)) is None else _clean(r.get(k))) for k in CSV_FIELDS})

    atomic_write(path, write)


def write_json(report: Report, path: str) -> None:
    """Settings, table, per-file rows, problems and warnings as one JSON object."""
    data = _clean(report.to_json())

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)

    atomic_write(path, write)
