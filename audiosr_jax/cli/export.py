"""Assemble trained VAE, LDM and vocoder weights into one inference checkpoint directory.

    python export.py --vae WORKDIR --ldm WORKDIR --vocoder WORKDIR --out DIR [--no-ema] [--overwrite]

(installed: ``audiosr-jax-export``). Each source is a training workdir of that stage or a converted AudioSR
directory; see ``audiosr_jax.training.export.export_weights``. Exit status 2 with one line for a user error.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Assemble trained VAE, LDM and vocoder weights (training workdirs or converted AudioSR "
                    "directories) into one inference checkpoint directory for sample.py --checkpoint.")
    parser.add_argument("--vae", required=True, help="VAE-stage workdir or converted directory")
    parser.add_argument("--ldm", required=True,
                        help="LDM- or distill-stage workdir, or converted directory (UNet + scale)")
    parser.add_argument("--vocoder", required=True, help="vocoder-stage workdir or converted directory")
    parser.add_argument("--out", required=True, help="inference checkpoint directory to create")
    parser.add_argument("--no-ema", action="store_true", help="export the UNet's raw weights, not its EMA")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only checkpoint managers
    import jax
    import numpy as np

    from audiosr_jax.errors import UserError
    from audiosr_jax.training.export import export_weights

    try:
        w = export_weights(args.vae, args.ldm, args.vocoder, args.out, use_ema=not args.no_ema,
                           overwrite=args.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {k: sum(int(np.size(x)) for x in jax.tree.leaves(p)) for k, p in w.params.items()}
    print(f"wrote {args.out}: scale_factor={w.scale_factor:.6g}, "
          + ", ".join(f"{k} {n:,} params" for k, n in counts.items()))
    d = w.diffusion
    print(f"diffusion: {d.schedule} {d.kwargs or ''} T={d.num_timesteps}, {d.parameterization}-prediction")
    if w.sampling:
        print("sampling: " + ", ".join(f"{k}={v}" for k, v in sorted(w.sampling.items())))
    print(f"source: {w.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
