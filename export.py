"""Assemble trained stages into one inference checkpoint: python export.py --vae W --ldm W --vocoder W --out DIR

A thin entry point; the command line lives in audiosr_jax/cli/export.py (also installed as
`audiosr-jax-export`).
"""

import sys

from audiosr_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
