"""Score super-resolved outputs against 48 kHz references, or simulate low-resolution inputs:
python evaluate.py --outputs OUT --references REFS [--inputs IN] [--csv F] [--json F] [--png DIR] ...

A thin entry point; the command line lives in audiosr_jax/cli/evaluate.py (python -m audiosr_jax.cli.evaluate).
"""

import sys

from audiosr_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
