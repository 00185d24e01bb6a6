"""Cost of the live per-step progress bar: one 5.12 s window sampled with and without the per-call host
callback, same program otherwise, interleaved repeats, median seconds.

    python benchmarks/bench_progress.py --width reduced --steps 20 --repeats 3
    python benchmarks/bench_progress.py --width full --steps 10 --repeats 2

Prints seconds per window with and without the bar and the relative cost (target: ≤ 2 %).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", choices=["tiny", "reduced", "full"], default="reduced")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import jax
    import numpy as np

    from audiosr_jax import audio
    from audiosr_jax.inference.checkpoint import load_weights
    from audiosr_jax.convert import convert_file
    from audiosr_jax.inference import progress
    from audiosr_jax.inference.pipeline import (SamplingOptions, draw_noise, item_keys, latent_shape, num_sampler_steps,
                                      super_resolve_windows)
    from audiosr_jax.lab.testing import write_synthetic_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        src = write_synthetic_checkpoint(os.path.join(tmp, "m.safetensors"), args.width)
        convert_file(src, os.path.join(tmp, "ckpt"))
        weights = load_weights(os.path.join(tmp, "ckpt"))
    x = jax.numpy.asarray(0.1 * np.random.default_rng(0).standard_normal((1, audio.SEGMENT_SAMPLES)), np.float32)
    times = {False: [], True: []}
    for with_bar in (False, True):  # compile both first
        opts = SamplingOptions(steps=args.steps, progress=with_bar)
        noise = draw_noise(item_keys(0, [0], [0]), latent_shape(512, weights), num_sampler_steps(opts, weights))
        super_resolve_windows(weights, x, noise, opts).block_until_ready()
    for _ in range(args.repeats):
        for with_bar in (False, True):
            opts = SamplingOptions(steps=args.steps, progress=with_bar)
            noise = draw_noise(item_keys(0, [0], [0]), latent_shape(512, weights), num_sampler_steps(opts, weights))
            with progress.step_bar(enabled=with_bar) as bar:
                bar.add(args.steps)
                t0 = time.perf_counter()
                super_resolve_windows(weights, x, noise, opts).block_until_ready()
                times[with_bar].append(time.perf_counter() - t0)
    off, on = float(np.median(times[False])), float(np.median(times[True]))
    print(f"width {args.width}, DDIM {args.steps} steps, one 5.12 s window, median of {args.repeats}:")
    print(f"  without bar {off:.3f} s, with bar {on:.3f} s, cost {100 * (on - off) / off:+.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
