"""Train one stage: python train.py --config=audiosr_jax/configs/ldm.py[:tiny] --workdir=DIR [--config.train.batch_size=64].

A thin entry point; the command line lives in audiosr_jax/cli/train.py.
"""

import sys

from audiosr_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
