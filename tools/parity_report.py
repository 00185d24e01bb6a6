"""Print every parity metric of audiosr-jax against a reference fixture directory (not part of CI).

    python tools/parity_report.py tests/fixtures          # reduced width (the committed fixtures)
    python tools/parity_report.py /work/fullref           # full width, after
        .refenv/bin/python tools/reference/make_fixtures.py --width full --out /work/fullref
"""

import argparse
import json
import sys
import time

from audiosr_jax.lab import parity


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixtures", help="directory written by tools/reference/make_fixtures.py")
    ap.add_argument("--json", help="also write the metrics to this JSON file")
    args = ap.parse_args()
    start = time.perf_counter()
    weights = parity.reference_weights(args.fixtures)
    print(f"architecture: VAE ch={weights.vae.ch}, UNet model_channels={weights.unet.model_channels}, "
          f"vocoder channels={weights.vocoder.upsample_initial_channel}")
    metrics = parity.compare(args.fixtures, weights)
    for k, v in metrics.items():
        print(f"{k:32s} {v:.4g}")
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
