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
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="audio files, folders, globs, or @list.txt")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (python -m audiosr_jax.convert ...)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default 50, as the official CLI)")
    p.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance scale (default 3.5)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta; 1.0 = stochastic, as the reference")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpmpp_2m", "unipc", "euler", "heun"],
                   help="ddim (default, the reference's); dpmpp_2m (best ≤ 15 steps), unipc (≥ 20 steps), "
                        "euler (= DDIM eta 0) or heun (2nd order, 2·steps−1 network calls)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="network compute dtype")
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
    p.add_argument("--multihost", action="store_true", help="jax.distributed.initialize(); each host takes its share")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _enable_compilation_cache() -> None:
    """Persist compiled XLA programs so a second run skips compilation (tens of seconds at full width)."""
    import jax

    cache = os.environ.get("AUDIOSR_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "audiosr_jax", "xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _check_output_file(path: str, overwrite: bool) -> None:
    import soundfile as sf

    from audiosr_jax.errors import UserError

    ext = os.path.splitext(path)[1].lstrip(".").upper()
    if ext not in sf.available_formats():
        raise UserError(f"{path}: unknown output format {ext or '(no extension)'!r}; use .wav, .flac or .ogg")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path}: already exists (use --overwrite)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: output directory {parent} does not exist")


def _check_writable(folder: str, what: str) -> None:
    """Create `folder` if needed and write a probe file there, so an unwritable or full location is found
    before any compute (one-line UserError naming it and the cause)."""
    import tempfile

    from audiosr_jax.errors import UserError

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".audiosr-jax-probe-") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"{folder}: cannot write the {what} there: {e.strerror or e}") from None


def _check_flags(args) -> None:
    """Every flag's range, before anything is read (one-line UserError naming the flag)."""
    import math

    from audiosr_jax.errors import UserError

    if not 1 <= args.steps <= 1000:
        raise UserError(f"--steps must be in [1, 1000], got {args.steps}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if not math.isfinite(args.guidance):
        raise UserError(f"--guidance must be a finite number, got {args.guidance}")
    if not (math.isfinite(args.eta) and 0.0 <= args.eta <= 1.0):
        raise UserError(f"--eta must be in [0, 1] (0 deterministic, 1 the reference's stochastic DDIM), got {args.eta}")
    if not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    if args.devices < 0:
        raise UserError(f"--devices must be ≥ 0 (0 = all local devices), got {args.devices}")
    if args.max_channels < 1:
        raise UserError(f"--max-channels must be ≥ 1, got {args.max_channels}")


def _check_sampler_fits(args, weights) -> None:
    """The sampler and step count against the model's own schedule and parameterisation (one-line UserError)."""
    from audiosr_jax.diffusion import sampling
    from audiosr_jax.errors import UserError

    d = weights.diffusion
    if args.steps > d.num_timesteps:
        raise UserError(f"--steps {args.steps}: {args.checkpoint} was trained with {d.num_timesteps} timesteps")
    try:
        ts = sampling.network_timesteps(args.sampler, d.alphas_cumprod(), args.steps)
        sampling.check_timesteps(d.parameterization, d.alphas_cumprod(), ts)
    except ValueError as e:
        raise UserError(f"--sampler {args.sampler} --steps {args.steps} with {args.checkpoint}: {e}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    from audiosr_jax.errors import UserError

    try:
        _check_flags(args)
        from audiosr_jax.inputs import assign_outputs, check_outputs_are_not_inputs, expand_inputs, shard_for_host

        jobs = assign_outputs(expand_inputs(args.inputs, exclude=args.output), args.output)
        check_outputs_are_not_inputs(jobs, args.inputs, args.output)
        single = len(jobs) == 1 and jobs[0].output == args.output
        report = None if single else (args.report or os.path.join(args.output, "report.json"))
        if single:
            if not os.path.exists(jobs[0].input):
                raise UserError(f"{jobs[0].input}: no such file")
            _check_output_file(jobs[0].output, args.overwrite)
            _check_writable(os.path.dirname(os.path.abspath(jobs[0].output)), "output")
        else:
            _check_writable(args.output, "outputs")
            _check_writable(os.path.dirname(os.path.abspath(report)), "report")
        _enable_compilation_cache()
        from audiosr_jax import memory

        import jax
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        from audiosr_jax.batch import BatchConfig, BatchStopped, merge_previous_report, run_batch, write_report
        from audiosr_jax.checkpoint import load_weights
        from audiosr_jax.pipeline import SamplingOptions

        if args.multihost:
            jax.distributed.initialize()
            jobs = shard_for_host(jobs, jax.process_index(), jax.process_count())
        if single:  # bad audio fails before the (large) checkpoint is loaded
            from audiosr_jax.audio import load_audio

            load_audio(jobs[0].input, max_channels=args.max_channels)
        if args.devices > jax.local_device_count():
            raise UserError(f"--devices {args.devices}: this process has {jax.local_device_count()} local devices")
        devices = jax.local_devices()[: args.devices or None]
        mesh = Mesh(np.asarray(devices), ("data",))
        # placed once, replicated (or, --low-memory, read per stage and batch)
        weights = load_weights(args.checkpoint, sharding=NamedSharding(mesh, P()), lazy=args.low_memory)
        memory.release_free_memory()  # the restore's transient buffers
        _check_sampler_fits(args, weights)
        cfg = BatchConfig(options=SamplingOptions(args.steps, args.guidance, args.eta, args.sampler, args.dtype),
                          seed=args.seed, batch_per_device=args.batch_size, max_channels=args.max_channels,
                          overwrite=args.overwrite or single, match_loudness=args.match_loudness)
        start = time.perf_counter()
        stopped = None
        try:
            results = run_batch(weights, jobs, cfg, mesh=mesh, progress=not (args.no_progress or single))
        except BatchStopped as e:
            results, stopped = e.results, str(e)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are complete; nothing partial was written", file=sys.stderr)
        return 130

    elapsed = time.perf_counter() - start
    failed = [r for r in results if r.status == "failed"]
    for r in results:
        if r.note:
            print(f"warning: {r.note}", file=sys.stderr)
    if single:
        r = results[0]
        if failed:
            print(f"error: {r.reason}", file=sys.stderr)
            return 2
        cut = ", ".join(f"{c / 1000:.1f} kHz" for c in r.cutoff_hz)
        print(f"{r.input} -> {r.output}: {r.duration_s:.2f} s, {r.channels} channel(s), detected cutoff {cut}, "
              f"{r.windows} window(s), {elapsed:.1f} s")
        return 0
    for r in failed:  # first, so the reasons are seen even if the report cannot be written
        print(f"failed: {r.reason}", file=sys.stderr)
    if report is not None:
        try:
            write_report(merge_previous_report(results, report), report)
        except OSError as e:
            print(f"error: {report}: cannot write the report: {e.strerror or e}", file=sys.stderr)
            report = None
    done = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    audio_s = sum(r.duration_s for r in results if r.status == "ok")
    print(f"{done} written, {skipped} skipped, {len(failed)} failed in {elapsed:.1f} s "
          f"({audio_s / max(elapsed, 1e-9):.2f} s of audio per second); report: {report or 'not written'}")
    if stopped:
        print(f"error: {stopped}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
