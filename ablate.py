"""Run an ablation grid: python ablate.py --grid=audiosr_jax/configs/ablations/<name>.py [--workdir=DIR] [--cell=NAME].

A thin entry point; the command line lives in audiosr_jax/cli/ablate.py (also installed as `audiosr-jax-ablate`).
"""

import sys

from audiosr_jax.cli.ablate import main

if __name__ == "__main__":
    sys.exit(main())
