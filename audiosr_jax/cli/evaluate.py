"""Measure super-resolved outputs against full-band references, per input cutoff; simulate low-res inputs.

Evaluate outputs of real low-resolution inputs::

    python evaluate.py --outputs OUT --references REFS [--inputs LOWRES]
        [--csv report.csv] [--json report.json] [--png PNGDIR]

Measure the model on your own full-band (48 kHz) recordings, in two steps:

1. ``python evaluate.py --simulate 4000,8000,12000 --references REFS --inputs SIM``
   low-passes every reference at each cutoff with the reference pipeline's filter chain (order-8 elliptic by
   default; ``--filter``, ``--order``; ``audiosr_jax.inference.lowpass.lowpass_filter``: sosfiltfilt, polyphase
   down/up to twice the cutoff, sosfiltfilt) and writes 48 kHz float WAVs ``SIM/lp<cutoff Hz>/<relative
   path>.wav`` plus ``SIM/manifest.json`` (each input's reference, cutoff, filter and measured cutoff).
2. Run the model on ``SIM`` into ``OUT`` keeping the relative paths (``OUT/lp4000/a/b.wav``; the batch
   command mirrors them), then evaluate with the same arguments as step 1 minus ``--simulate``::

       python evaluate.py --outputs OUT --references REFS --inputs SIM [--csv ...] [--png ...]

   The manifest found in ``SIM`` (or given with ``--manifest``) pairs each output with its reference and
   supplies the exact simulated cutoff.

Pairing (without a manifest): files are matched by their path relative to each folder, without the
extension (``OUT/a/b.wav`` <-> ``REFS/a/b.flac``), else by a unique file stem. A leading ``lp<N>`` folder in
an output's path is the simulated cutoff ``N`` Hz and is not part of the reference's name; the suffix of the
official AudioSR CLI (``_AudioSR_Processed_48K``, ``--suffix``) is ignored.

Cutoff of each output, in this order: the manifest's; ``lowpass.detect_cutoff_hz`` (the pipeline's 98.5 %
cumulative-magnitude rule) on the matching input in ``--inputs``; the ``lp<N>`` folder name; else unknown.

Per file (everything resampled to 48 kHz with soxr when needed, channel counts reconciled by a mono mix,
lengths trimmed to the shorter; see ``audiosr_jax.metrics`` for the definitions and their sources):
``lsd`` (ssr_eval, as AudioSR / NVSR report it), ``lsd_hf`` / ``lsd_lf`` (NU-Wave 2 family, generated / kept
band), ``lsd_nuwave2`` (NU-Wave 2 full band), ``lsd_energy_scaled`` (AudioSR README 2025-06), ``si_sdr``,
``snr``, and with an input the same LSDs of the input itself (``input_*``: the baseline a model must beat).

The table printed at the end has one row per cutoff bucket (``--bucket-khz``, default 1 kHz) with n and
mean ± std (over files, ddof 0) of LSD, LSD-HF, LSD-LF and SI-SDR. Files are averaged directly (ssr_eval
averages per speaker first). Missing pairs, unreadable files and undefined metrics are reported at the end,
one line each, and make the exit status 1 (2 for a usage error).
"""

from __future__ import annotations

import argparse
import os
import sys

from audiosr_jax.errors import UserError
from audiosr_jax.evaluation.pairing import DEFAULT_SUFFIXES, MANIFEST
from audiosr_jax.evaluation.report import evaluate, format_table, write_csv, write_json
from audiosr_jax.evaluation.simulate import FILTER_TYPES, parse_cutoffs, simulate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python evaluate.py",
        description="Score super-resolved outputs against 48 kHz references (LSD, LSD-HF, LSD-LF, SI-SDR per "
                    "cutoff), or --simulate low-resolution inputs from full-band references.",
        epilog="Two-step flow: --simulate 4000,8000 --references REFS --inputs SIM; run the model on SIM into "
               "OUT; then --outputs OUT --references REFS --inputs SIM.",
    )
    p.add_argument("--outputs", help="folder of model outputs (searched recursively)")
    p.add_argument("--references", required=True, help="folder of full-band references (48 kHz)")
    p.add_argument("--inputs", help="folder of the model's inputs (cutoff detection, baseline, PNG panel); "
                                    "with --simulate, where the simulated inputs are written")
    p.add_argument("--manifest", help="manifest of a --simulate run (default: INPUTS/manifest.json if present)")
    p.add_argument("--csv", help="write per-file results as CSV")
    p.add_argument("--json", help="write settings, table, per-file results and problems as JSON")
    p.add_argument("--png", metavar="DIR", help="write a spectrogram PNG (input, output, reference) per file")
    p.add_argument("--png-seconds", type=float, default=30.0, help="seconds drawn per PNG (default 30)")
    p.add_argument("--bucket-khz", type=float, default=1.0, help="width of the cutoff buckets (default 1 kHz)")
    p.add_argument("--max-length-diff", type=float, default=0.1,
                   help="warn when output and reference lengths differ by more (seconds, default 0.1)")
    p.add_argument("--suffix", action="append", default=None,
                   help="output-name suffix to ignore when pairing (default: _AudioSR_Processed_48K); repeatable")
    p.add_argument("--simulate", metavar="CUTOFF[,CUTOFF...]",
                   help="low-pass the references at these cutoffs (Hz, or 4k) into --inputs, with a manifest")
    p.add_argument("--filter", default="ellip", choices=FILTER_TYPES, help="--simulate filter type (default ellip)")
    p.add_argument("--order", type=int, default=8, help="--simulate filter order (default 8, as the pipeline)")
    p.add_argument("--overwrite", action="store_true", help="--simulate: replace an earlier simulation")
    p.add_argument("--every-bin", action="store_true",
                   help="score every bin even where a reference is narrower than 24 kHz (default: LSD-HF/LF and "
                        "NU-Wave 2 LSD stop at the reference's measured bandwidth)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _report_lines(title: str, lines: list[str]) -> None:
    if lines:
        print(f"{title} ({len(lines)}):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)


def main(argv=None) -> int:
    """Command-line entry point. Exit status: 0 all files scored, 1 problems (listed at the end), 2 usage."""
    args = parse_args(argv)
    progress = not args.no_progress
    try:
        if args.simulate is not None:
            if not args.inputs:
                raise UserError("--simulate needs --inputs DIR (where the simulated inputs are written)")
            cutoffs = parse_cutoffs(args.simulate)
            manifest, problems, warnings = simulate(args.references, args.inputs, cutoffs, ftype=args.filter,
                                                    order=args.order, overwrite=args.overwrite, progress=progress)
            n_refs = len({it["reference"] for it in manifest["items"]})
            print(f"wrote {len(manifest['items'])} inputs ({n_refs} references x {len(cutoffs)} cutoffs, "
                  f"{args.filter} order {args.order}) to {args.inputs}; manifest {os.path.join(args.inputs, MANIFEST)}")
            print(f"next: run the model on {args.inputs} into OUT (same relative paths), then\n"
                  f"  python evaluate.py --outputs OUT --references {args.references} --inputs {args.inputs}")
            _report_lines("warnings", warnings)
            _report_lines("problems", problems)
            return 1 if problems else 0
        if not args.outputs:
            raise UserError("--outputs DIR is required (or --simulate to make inputs)")
        if args.bucket_khz <= 0:
            raise UserError(f"--bucket-khz must be positive, got {args.bucket_khz}")
        suffixes = tuple(args.suffix) if args.suffix else DEFAULT_SUFFIXES
        report = evaluate(args.outputs, args.references, args.inputs, manifest=args.manifest, png_dir=args.png,
                          png_seconds=args.png_seconds, bucket_width_khz=args.bucket_khz,
                          max_length_diff_s=args.max_length_diff, suffixes=suffixes, progress=progress,
                          within_reference_band=not args.every_bin)
        print(format_table(report.table) if report.table else "no file could be scored")
        if args.csv:
            write_csv(report.rows, args.csv)
        if args.json:
            write_json(report, args.json)
        _report_lines("warnings", report.warnings)
        _report_lines("problems", report.problems)
        return 1 if report.problems else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
