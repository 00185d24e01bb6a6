"""Reference (PyTorch AudioSR 0.0.7) stage timings, run in the reference venv through a subprocess.

    python benchmarks/reference_stages.py --width full --sampling-steps 50 > ref.json

or from another benchmark:

    from benchmarks.reference_stages import reference_stage_timings
    ref = reference_stage_timings("reduced", sampling_steps=2)   # {stage: seconds, ..., "peak_rss_gb": ...}

The reference cannot share this venv (it pins numpy 1.23.5), so this calls
`tools/reference/time_reference.py` with the interpreter of `.refenv` (or $REFENV), built by
`tools/reference/build_venv.sh`. The stage names are documented in that script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "reference", "time_reference.py")


def reference_python() -> str:
    """The reference venv's interpreter; raises FileNotFoundError with the build command if it is missing."""
    refenv = os.environ.get("REFENV", os.path.join(REPO, ".refenv"))
    python = os.path.join(refenv, "bin", "python")
    if not os.path.exists(python):
        raise FileNotFoundError(f"{python} not found: build the reference venv with "
                                f"`bash tools/reference/build_venv.sh` (REFENV={refenv})")
    return python


def reference_stage_timings(width: str = "reduced", sampling_steps: int = 50, guidance_scale: float = 3.5,
                            repeats: int = 1, warmup: int = 0, timeout: float | None = None) -> dict:
    """Run time_reference.py in the reference venv and return its JSON object (seconds per stage)."""
    cmd = [reference_python(), SCRIPT, "--width", width, "--sampling-steps", str(sampling_steps),
           "--guidance-scale", str(guidance_scale), "--repeats", str(repeats), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"time_reference.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", choices=("reduced", "full"), default="reduced")
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--guidance-scale", type=float, default=3.5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0)
    args = ap.parse_args(argv)
    res = reference_stage_timings(args.width, args.sampling_steps, args.guidance_scale, args.repeats, args.warmup)
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
