"""End-to-end demo on the embedded default: checkpoint in the released layout → converter → sample.py.

    python -m audiosr_jax.lab.convert_demo [--workdir out/convert_demo] [--width reduced] [--steps 50]

No weights can be downloaded here, so the checkpoint holds synthetic weights (the parity tests' reduced
width by default) in the exact key layout of the released `pytorch_model.bin`. Everything a user with the
real weights runs is exercised: conversion with architecture inference, loading, a 44.1 kHz stereo
band-limited input, resampling, cutoff detection, the low-pass chain, 50 DDIM steps with guidance, the
vocoder and post-processing, and an atomic 48 kHz write. The output is not meaningful audio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=os.path.join("out", "convert_demo"))
    ap.add_argument("--width", choices=["tiny", "reduced"], default="reduced")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)

    import soundfile as sf

    from audiosr_jax.convert import convert_file
    from audiosr_jax.lab.synthetic import parity_clip
    from audiosr_jax.lab.testing import write_synthetic_checkpoint

    from audiosr_jax import audio

    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    torch_file = write_synthetic_checkpoint(os.path.join(args.workdir, f"audiosr_{args.width}.safetensors"), args.width)
    ckpt = os.path.join(args.workdir, f"ckpt_{args.width}")
    weights, report = convert_file(torch_file, ckpt, overwrite=True)
    print(f"[demo] converted {torch_file} -> {ckpt} ({time.perf_counter() - t0:.1f} s): {report.summary()}")

    sr = 44100
    left, right = parity_clip(sr, 4.0, cutoff_hz=4000.0, seed=0), parity_clip(sr, 4.0, cutoff_hz=6000.0, seed=1)
    src = os.path.join(args.workdir, "input_44k1_stereo.wav")
    sf.write(src, np.stack([left, right], axis=1), sr)
    out = os.path.join(args.workdir, "output_48k.wav")
    print(f"[demo] input: {src} (4.0 s, 44.1 kHz, stereo, band-limited to 4 and 6 kHz)")
    from audiosr_jax import AudioSR

    x, rate = sf.read(src, always_2d=True, dtype="float32")
    y = AudioSR.from_pretrained(ckpt)(x.T, rate, steps=args.steps)
    audio.write_audio(out, y)
    y, out_sr = sf.read(out)  # as written: 48 kHz, 24-bit
    spec = np.abs(np.fft.rfft(y, axis=0))
    freqs = np.fft.rfftfreq(y.shape[0], 1 / out_sr)
    above = 10 * np.log10(np.sum(spec[freqs > 8000] ** 2, axis=0) / np.sum(spec ** 2, axis=0))
    print(f"[demo] output: {out}: {y.shape[0] / out_sr:.2f} s, {out_sr} Hz, {y.shape[1]} channels; "
          f"energy above 8 kHz {above[0]:.1f} / {above[1]:.1f} dB of the total (synthetic weights: not meaningful)")
    print("[demo] with the released weights: python -m audiosr_jax.convert pytorch_model.bin ckpt/basic && "
          "python sample.py in.wav -o out.wav --checkpoint ckpt/basic")
    return 0


if __name__ == "__main__":
    sys.exit(main())
