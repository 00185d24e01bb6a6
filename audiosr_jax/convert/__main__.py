"""Command line: python -m audiosr_jax.convert IN OUT [--overwrite]."""

from __future__ import annotations

import argparse
import sys
import time

from audiosr_jax.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audiosr_jax.convert",
        description="Convert a released AudioSR PyTorch checkpoint (.bin/.pth/.ckpt/.safetensors) into an "
                    "audiosr-jax checkpoint directory (weights + architecture).")
    parser.add_argument("input", help="PyTorch checkpoint file")
    parser.add_argument("output", help="checkpoint directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)
    from audiosr_jax.convert.core import convert_file

    start = time.perf_counter()
    try:
        weights, report = convert_file(args.input, args.output, overwrite=args.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.input} -> {args.output} in {time.perf_counter() - start:.1f} s: {report.summary()}")
    print(f"architecture: VAE ch={weights.vae.ch}, UNet model_channels={weights.unet.model_channels}, "
          f"vocoder channels={weights.vocoder.upsample_initial_channel}, scale_factor={weights.scale_factor:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
