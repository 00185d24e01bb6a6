"""Peak memory and wall time of a real `sample.py` run, default vs --low-memory, beside the reference.

    python benchmarks/bench_memory.py --checkpoint CKPT --steps 50            # a converted checkpoint
    python benchmarks/bench_memory.py --steps 50 --reference                  # synthetic full-size weights
    python benchmarks/bench_memory.py --steps 10 --modes low-memory --batch-sizes 1,4

Each of our runs is a fresh `sample.py` process (loading, reading the persistent XLA cache that an
identical warm-up run filled, sampling, writing) on one 5.12 s mono clip per batch item; its peak RSS (VmHWM) and wall time are printed.
`--reference` runs the official AudioSR 0.0.7 in its own venv (tools/reference/time_reference.py, same
width, DDIM steps and guidance) and reports its `generate_batch` time (sampling, decoding, vocoder) and its
peak RSS from after the model is built (the synthetic-weight construction is not counted). Ours are compared
on the seconds sample.py reports for its files, i.e. after loading the weights as well, per window. Without `--checkpoint`, a
checkpoint with synthetic weights of `--width` is converted into `--workdir` once (full: 2.7 GB of weights;
timings are real, the audio is not). Run on an otherwise idle machine: the figures are the process's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The child: sample.py's main, then its own peak RSS on the last line of stdout.
_PROBE = ("import sys; from audiosr_jax.cli.sample import main; from audiosr_jax.memory import peak_rss_bytes; "
          "code = main(sys.argv[1:]); print('PEAK_RSS_BYTES', peak_rss_bytes(), flush=True); sys.exit(code)")


def run_ours(checkpoint: str, inputs: list[str], out_dir: str, steps: int, low_memory: bool, batch_size: int,
             cache: str, sampler: str = "ddim") -> dict:
    """One `sample.py` process over `inputs`: its peak RSS (GB), whole-process wall seconds, and the seconds
    sample.py reports for the files (everything after loading the weights: compile-cache load, front-end,
    sampling, decoding, writing)."""
    args = [*inputs, "-o", out_dir, "--checkpoint", checkpoint, "--steps", str(steps), "--sampler", sampler,
            "--batch-size", str(batch_size), "--devices", "1", "--overwrite",
            "--no-progress"] + (["--low-memory"] if low_memory else [])
    env = dict(os.environ, PYTHONPATH=REPO, AUDIOSR_JAX_CACHE=cache)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    peak = [int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("PEAK_RSS_BYTES")]
    files_s = re.findall(r"failed in ([0-9.]+) s", run.stdout)
    if run.returncode != 0 or not peak or not files_s:
        sys.stderr.write(run.stdout[-2000:] + run.stderr[-2000:])
        raise SystemExit(f"error: sample.py exited with {run.returncode}")
    return {"peak_rss_gb": peak[0] / 1e9, "wall_s": wall, "files_s": float(files_s[-1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="converted checkpoint (default: synthetic weights of --width)")
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="full")
    ap.add_argument("--workdir", default=os.path.join(REPO, "out", "bench_memory"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--modes", default="default,low-memory")
    ap.add_argument("--sampler", default="ddim", help="ours only; the reference always runs DDIM")
    ap.add_argument("--batch-sizes", default="1", help="windows per batch (one 5.12 s clip each)")
    ap.add_argument("--reference", action="store_true", help="also run the official package (.refenv)")
    ap.add_argument("--cold", action="store_true", help="no warm-up run: the timed run compiles (or reads the cache)")
    args = ap.parse_args()

    import soundfile as sf

    from audiosr_jax.lab.synthetic import parity_clip

    os.makedirs(args.workdir, exist_ok=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = os.path.join(args.workdir, f"ckpt_{args.width}")
        if not os.path.isdir(checkpoint):
            from audiosr_jax.convert import convert_file
            from audiosr_jax.lab.testing import write_synthetic_checkpoint

            print(f"[bench] converting synthetic {args.width} weights into {checkpoint}", file=sys.stderr)
            with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                convert_file(write_synthetic_checkpoint(os.path.join(tmp, "w.safetensors"), args.width), checkpoint)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    clips = []
    for i in range(max(batch_sizes)):
        path = os.path.join(args.workdir, f"clip{i}.wav")
        if not os.path.exists(path):
            sf.write(path, parity_clip(48000, 5.0, cutoff_hz=4000.0, seed=i), 48000)
        clips.append(path)

    cache = os.path.join(args.workdir, "xla_cache")
    rows = []
    for mode in args.modes.split(","):
        for b in batch_sizes:
            low = mode == "low-memory"
            if not args.cold:  # the same program once, to fill the persistent XLA cache
                run_ours(checkpoint, clips[:b], os.path.join(args.workdir, "warm"), args.steps, low, b, cache,
                         args.sampler)
            r = run_ours(checkpoint, clips[:b], os.path.join(args.workdir, "out"), args.steps, low, b, cache,
                         args.sampler)
            r.update(run=f"audiosr-jax {args.sampler} {args.steps}, {mode}, batch {b}", windows=b)
            rows.append(r)
            print(f"[bench] {r['run']}: peak {r['peak_rss_gb']:.2f} GB, {r['wall_s']:.1f} s", file=sys.stderr)
    ref = None
    if args.reference:
        from benchmarks.reference_stages import reference_stage_timings

        ref = reference_stage_timings(args.width, sampling_steps=args.steps)

    print(f"\n{args.width} width, {args.steps} steps, guidance 3.5, one CPU device, one 5.12 s window per clip; "
          f"checkpoint {checkpoint}")
    print("| run | peak RSS (GB) | vs reference | s per window (after loading) | vs reference | whole process s |")
    print("|---|---|---|---|---|---|")
    ref_peak = (ref.get("peak_rss_run_gb") or ref["peak_rss_gb"]) if ref else None
    ref_s = ref["generate_batch_s"] if ref else None
    if ref:
        print(f"| reference: AudioSR 0.0.7 generate_batch, ddim {args.steps} | {ref_peak:.2f} | 1.00 | {ref_s:.1f} "
              f"| 1.00 | - |")
    for r in rows:
        per = r["files_s"] / r["windows"]
        mem = f"{r['peak_rss_gb'] / ref_peak:.2f}" if ref_peak else "-"
        speed = f"{ref_s / per:.2f}× faster" if ref_s else "-"
        print(f"| {r['run']} | {r['peak_rss_gb']:.2f} | {mem} | {per:.1f} | {speed} | {r['wall_s']:.1f} |")
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"ours": rows, "reference": ref, "steps": args.steps, "sampler": args.sampler,
                   "width": args.width}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
