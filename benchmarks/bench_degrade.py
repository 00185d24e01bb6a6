"""Throughput of the training degradation (random low-pass + log-mel) on 10.24 s clips, per CPU core.

    taskset -c 0 python benchmarks/bench_degrade.py            # one core: the figures are per core
    python benchmarks/bench_degrade.py --clips 32 --batch 8

Paths timed (audio-seconds processed per wall second; run pinned to one core for per-core figures):
  * scipy   : per clip, draw_spec + apply_lowpass (sosfiltfilt, resample_poly down/up, sosfiltfilt) on the
              host, then audio.log_mel_spectrogram (JAX, jitted) of a batch;
  * jax     : per batch, response_params on the host (filter designs only), then one jitted call of
              degrade_on_device + log_mel_spectrogram (gain evaluated on device, rfft/irfft, mel);
  * jax(dev): the jitted device call alone (what a host with an accelerator no longer pays on its CPUs).
Random noise clips; the draws come from DegradeConfig() with seed 0, so every run times the same specs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from audiosr_jax import degrade as D  # noqa: E402
from audiosr_jax.audio import log_mel_spectrogram  # noqa: E402

SR = 48000
CLIP = 491520  # 10.24 s


@jax.jit
def _device_step(x, params):
    low = D.degrade_on_device(x, params)
    return log_mel_spectrogram(low)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cutoff-step", type=int, default=1, help="DegradeConfig.cutoff_step_hz (1 = exact)")
    args = ap.parse_args()
    cfg = D.DegradeConfig(cutoff_step_hz=args.cutoff_step)
    rng = np.random.default_rng(0)
    clips = (0.1 * rng.standard_normal((args.clips, CLIP))).astype(np.float32)
    specs = [D.draw_spec(cfg, 0, 0, i) for i in range(args.clips)]
    batches = [range(i, min(i + args.batch, args.clips)) for i in range(0, args.clips, args.batch)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    audio_s = args.clips * CLIP / SR

    # warm up (compile) both paths on the first batch
    idx = list(batches[0])
    jax.block_until_ready(log_mel_spectrogram(clips[idx]))
    jax.block_until_ready(_device_step(clips[idx], D.response_params([specs[i] for i in idx])))

    t0 = time.perf_counter()
    t_filter = 0.0
    for b in batches:
        tf = time.perf_counter()
        low = np.stack([D.apply_lowpass(clips[i], D.draw_spec(cfg, 0, 0, i), SR) for i in b])
        t_filter += time.perf_counter() - tf
        jax.block_until_ready(log_mel_spectrogram(low))
    t_scipy = time.perf_counter() - t0

    t0 = time.perf_counter()
    t_dev = 0.0
    for b in batches:
        params = D.response_params([D.draw_spec(cfg, 0, 0, i) for i in b])
        td = time.perf_counter()
        jax.block_until_ready(_device_step(clips[list(b)], params))
        t_dev += time.perf_counter() - td
    t_jax = time.perf_counter() - t0

    backend = jax.default_backend()
    print(f"# {args.clips} clips x 10.24 s, batch {args.batch}, cutoff step {args.cutoff_step} Hz, {cores} core(s) visible, backend {backend}")
    print(f"{'path':<34}{'wall s':>9}{'audio-s/s':>12}{'per core':>11}")
    rows = [
        ("scipy low-pass + JAX log-mel", t_scipy),
        ("  of which scipy low-pass", t_filter),
        ("JAX low-pass + log-mel (all)", t_jax),
        ("  of which jitted device call", t_dev),
    ]
    for name, t in rows:
        print(f"{name:<34}{t:9.2f}{audio_s / t:12.1f}{audio_s / t / cores:11.1f}")


if __name__ == "__main__":
    main()
