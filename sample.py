"""Super-resolve one audio file to 48 kHz: python sample.py IN -o OUT --checkpoint DIR [--steps 50] ...

A thin entry point; the command line lives in audiosr_jax/cli/sample.py (also installed as
`audiosr-jax-sample`).
"""

import sys

from audiosr_jax.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
