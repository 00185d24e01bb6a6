"""Batch-inference throughput: seconds of 48 kHz audio produced per second, vs batch size and device count.

    python benchmarks/bench_batch.py --width reduced --steps 50 --batch-sizes 1,2,4 --devices 1
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/bench_batch.py --devices 1,2,8
    python benchmarks/bench_batch.py --width full --reference   # adds the reference's generate_batch time

Runs `batch.run_batch` on N synthetic 5.12 s mono clips (one window each) with synthetic weights of the
chosen width; reports compile time (first batch shape), steady-state throughput (real-time factor: audio
seconds per wall second), and the process's peak RSS. On fake CPU devices the device count divides the same
2 cores, so it shows the sharding overhead, not a speed-up; on a GPU/TPU host it scales.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="reduced")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-sizes", default="1,2,4", help="windows per device per batch")
    ap.add_argument("--devices", default="1", help="comma-separated device counts")
    ap.add_argument("--clips", type=int, default=8)
    args = ap.parse_args()

    import jax
    import numpy as np
    import soundfile as sf
    from jax.sharding import Mesh

    from audiosr_jax.inference.batch import BatchConfig, run_batch
    from audiosr_jax.convert.core import convert_state_dict
    from audiosr_jax.inference.inputs import assign_outputs, expand_inputs
    from audiosr_jax.inference.pipeline import SamplingOptions
    from audiosr_jax.lab.synthetic import parity_clip
    from audiosr_jax.lab.testing import synthetic_torch_checkpoint

    weights, _ = convert_state_dict(synthetic_torch_checkpoint(args.width), origin=args.width)
    options = SamplingOptions(args.steps, 3.5, 1.0, args.sampler, args.dtype)
    print(f"width={args.width} steps={args.steps} sampler={args.sampler} dtype={args.dtype} "
          f"clips={args.clips}×5.12 s; {jax.devices()[0].platform} ×{len(jax.devices())}")
    print(f"{'devices':>7} {'batch/dev':>9} {'compile+1st s':>13} {'steady s':>9} {'RTF (audio s/s)':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.clips):
            p = os.path.join(tmp, f"clip{i}.wav")
            sf.write(p, parity_clip(48000, 5.12, cutoff_hz=3000 + 500 * (i % 8), seed=i), 48000)
            paths.append(p)
        for n_dev in (int(d) for d in args.devices.split(",")):
            mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                cfg = BatchConfig(options=options, batch_per_device=bs, overwrite=True)
                warm = assign_outputs(expand_inputs(paths[: bs * n_dev]), os.path.join(tmp, "warm"))
                t0 = time.perf_counter()
                run_batch(weights, warm, cfg, mesh=mesh, progress=False)
                first = time.perf_counter() - t0
                jobs = assign_outputs(expand_inputs(paths), os.path.join(tmp, f"o{n_dev}_{bs}"))
                t0 = time.perf_counter()
                res = run_batch(weights, jobs, cfg, mesh=mesh, progress=False)
                dt = time.perf_counter() - t0
                assert all(r.status == "ok" for r in res), [r.reason for r in res if r.status != "ok"]
                audio_s = sum(r.duration_s for r in res)
                print(f"{n_dev:7d} {bs:9d} {first:13.1f} {dt:9.1f} {audio_s / dt:16.3f}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
