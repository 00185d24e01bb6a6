"""Super-resolve audio to 48 kHz with a converted AudioSR checkpoint: one file, or thousands.

    python sample.py IN.wav -o OUT.wav --checkpoint DIR [--steps 50] [--guidance 3.5] [--eta 1.0] [--seed 42]
    python sample.py music/ speech/*.flac @list.txt -o OUTDIR --checkpoint DIR [--batch-size 4] [--sampler dpmpp_2m]

Inputs: files, folders (recursive), globs, or @FILE lists; anything soundfile reads, any rate, any length
(long audio in overlapping 10.24 s windows), every channel (up to --max-channels). One input with an audio
OUTPUT path writes that file; otherwise OUTPUT is a folder that mirrors the inputs' layout, existing
outputs are skipped (--overwrite redoes them), and a report (JSON, or CSV by extension) lists every file's
status, cutoff, duration, windows and seconds (a rerun keeps what the earlier report knew of skipped files).
Outputs appear only when complete (temporary file + rename), with the user's umask. An output that is, or
would overwrite, an input is refused; an output folder inside the inputs is never read back as input. The
output location is checked for writing before any compute; a full disk stops the run with one line.
Exit status: 0 all written or skipped; 1 some files failed (named in the report and at the end); 2 a user
error (bad flag, missing checkpoint, or the single input is unusable); 130 interrupted.

--multihost: every process of the job runs the same command; the files' windows are shared out (a long
file is split by window), each process samples on its own devices, each output is written once, and
process 0 prints the summary and writes the report for the whole run.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from audiosr_jax.diffusion.sampling import ALL_SAMPLERS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="audio files, folders, globs, or @list.txt")
    p.add_argument("-i", "--input_audio_file", action="append", default=[], help="an input (the official CLI's flag)")
    p.add_argument("-il", "--input_file_list", action="append", default=[],
                   help="a text file with one input path per line (the official CLI's flag)")
    p.add_argument("-o", "--output", "-s", "--save_path", dest="output", required=True,
                   help="output file (one input) or folder")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="converted checkpoint directory, or a PyTorch .bin/.pth (converted once)")
    model.add_argument("--model", "--model_name", dest="model", choices=["basic", "speech"],
                       help="the released weights, fetched from the hub and converted once (default: basic)")
    # None: the checkpoint's own setting (a distilled student's step count), else the official CLI's
    p.add_argument("--steps", "--ddim_steps", dest="steps", type=int, default=None,
                   help="sampler steps (default: the checkpoint's own, else 50 as the official CLI)")
    p.add_argument("--guidance", "-gs", "--guidance_scale", dest="guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the checkpoint's own, else 3.5)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM eta; 1.0 = stochastic, as the reference (default: the checkpoint's own, else 1.0)")
    p.add_argument("--sampler", default=None, choices=list(ALL_SAMPLERS),
                   help="ddim (default, the reference's); dpmpp_2m (best ≤ 15 steps), unipc (≥ 20 steps), "
                        "euler (= DDIM eta 0) or heun (2nd order, 2·steps−1 network calls), ddim_progressive "
                        "(a distilled student's grid; its checkpoint sets it); a flow/bridge-"
                        "objective checkpoint takes euler, heun or midpoint (2nd order, 2·steps calls)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="network compute dtype")
    p.add_argument("--lowpass", default="official", choices=["official", "butter", "cheby1", "ellip", "bessel"],
                   help="the condition's low-pass family: official (default) draws it from the seed as the "
                        "official tool does (42 → ellip, 7 → bessel, 11 → cheby1), or name one")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=1, help="windows per device per batch (default 1)")
    p.add_argument("--devices", type=int, default=0, help="use the first N local devices (default: all)")
    p.add_argument("--max-channels", type=int, default=2, help="refuse inputs with more channels (default 2)")
    p.add_argument("--match-loudness", action="store_true", help="restore each input's integrated loudness")
    p.add_argument("--low-memory", action="store_true",
                   help="hold one network's weights at a time, re-read from the checkpoint for every batch "
                        "(full size: about half the peak memory, a few seconds more per batch; a larger "
                        "--batch-size amortises the reads)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    p.add_argument("--report", help="report path (.json or .csv); default OUTPUT/report.json for folders")
    p.add_argument("--multihost", action="store_true", help="join a multi-process job (pod, SLURM, or python -m audiosr_jax.launch); each process takes its share")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.inputs = args.inputs + args.input_audio_file + ["@" + f for f in args.input_file_list]
    if not args.inputs:
        p.error("give at least one input (a file, folder, glob or @list; or -i FILE / -il LIST)")
    return args


def _check_flags(args) -> None:
    """Every flag's range, before anything is read (one-line UserError naming the flag)."""
    import math

    from audiosr_jax.errors import UserError

    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise UserError(f"--steps must be in [1, 1000], got {args.steps}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise UserError(f"--guidance must be a finite number, got {args.guidance}")
    if args.eta is not None and not (math.isfinite(args.eta) and 0.0 <= args.eta <= 1.0):
        raise UserError(f"--eta must be in [0, 1] (0 deterministic, 1 the reference's stochastic DDIM), got {args.eta}")
    if not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    if args.devices < 0:
        raise UserError(f"--devices must be ≥ 0 (0 = all local devices), got {args.devices}")
    if args.max_channels < 1:
        raise UserError(f"--max-channels must be ≥ 1, got {args.max_channels}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from audiosr_jax.errors import UserError

    try:
        _check_flags(args)
        from audiosr_jax.inference.files import plan_files, run_files

        plan = plan_files(args.inputs, args.output, overwrite=args.overwrite, report=args.report,
                          max_channels=args.max_channels)  # every refusal before the (large) model is loaded
        import jax

        from audiosr_jax import AudioSR
        from audiosr_jax.inference.batch import BatchConfig

        if args.multihost:
            from audiosr_jax.runtime import initialize_distributed

            # a pod / SLURM job, or `python -m audiosr_jax.launch`: run_files then shares the windows out
            initialize_distributed()
        if args.devices > jax.local_device_count():
            raise UserError(f"--devices {args.devices}: this process has {jax.local_device_count()} local devices")
        sr = AudioSR.from_pretrained(args.checkpoint or args.model or "basic", devices=args.devices,
                                     low_memory=args.low_memory)
        try:
            options = sr.options(args.steps, args.guidance, args.eta, args.sampler, args.dtype)
        except UserError as e:
            raise UserError(f"--sampler/--steps with {args.checkpoint or args.model or 'basic'}: {e}") from None
        cfg = BatchConfig(options=options, seed=args.seed, batch_per_device=args.batch_size,
                          max_channels=args.max_channels, overwrite=args.overwrite,
                          match_loudness=args.match_loudness, lowpass=args.lowpass)
        outcome = run_files(sr.weights, plan, cfg, mesh=sr.mesh, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are complete; nothing partial was written", file=sys.stderr)
        return 130
    return _print_outcome(plan, outcome)


def _print_outcome(plan, outcome) -> int:
    """One line per failure and warning on stderr, a summary on stdout; the exit status. In a multi-process
    job each process prints the line of its share, and process 0 alone the rest, for the whole run; every
    process returns the whole run's status."""
    results = outcome.results
    failed = [r for r in results if r.status == "failed"]
    if outcome.share:
        print(outcome.share)
    if outcome.process[0] != 0:
        return (2 if plan.single else 1) if failed else 0
    for r in results:
        if r.note:
            print(f"warning: {r.note}", file=sys.stderr)
    if plan.single:
        r = results[0]
        if failed:
            print(f"error: {r.reason}", file=sys.stderr)
            return 2
        cut = ", ".join(f"{c / 1000:.1f} kHz" for c in r.cutoff_hz)
        print(f"{r.input} -> {r.output}: {r.duration_s:.2f} s, {r.channels} channel(s), detected cutoff {cut}, "
              f"{r.windows} window(s), {outcome.seconds:.1f} s")
        return 0
    for r in failed:
        print(f"failed: {r.reason}", file=sys.stderr)
    if outcome.report_error:
        print(f"error: {outcome.report_error}", file=sys.stderr)
    done = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    audio_s = sum(r.duration_s for r in results if r.status == "ok")
    print(f"{done} written, {skipped} skipped, {len(failed)} failed in {outcome.seconds:.1f} s "
          f"({audio_s / max(outcome.seconds, 1e-9):.2f} s of audio per second); report: "
          f"{outcome.report or 'not written'}")
    if outcome.stopped:
        print(f"error: {outcome.stopped}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
