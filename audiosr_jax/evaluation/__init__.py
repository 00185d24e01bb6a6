"""Evaluation of super-resolved audio against full-band references, per input cutoff.

  scoring.py   one output vs its reference (and input): every metric, the cutoff, PNGs
  pairing.py   which output goes with which reference and input (paths, stems, lp<N>, the manifest)
  report.py    a folder of outputs → per-file rows, the per-cutoff table, CSV / JSON
  simulate.py  low-resolution inputs (and their manifest) from full-band references

The command line is `python evaluate.py` (audiosr_jax/cli/evaluate.py).
"""

from audiosr_jax.evaluation.pairing import MANIFEST, load_manifest
from audiosr_jax.evaluation.report import Report, evaluate, format_table, summarize, write_csv, write_json
from audiosr_jax.evaluation.scoring import EVAL_SR, bucket_khz, evaluate_file, measure_cutoff_hz, read_audio
from audiosr_jax.evaluation.simulate import parse_cutoffs, simulate

__all__ = ["EVAL_SR", "MANIFEST", "Report", "bucket_khz", "evaluate", "evaluate_file", "format_table", "load_manifest",
           "measure_cutoff_hz", "parse_cutoffs", "read_audio", "simulate", "summarize", "write_csv", "write_json"]
