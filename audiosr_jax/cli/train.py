"""``python train.py --config=audiosr_jax/configs/<stage>.py[:preset] [--config.x=y ...] --workdir=DIR``
(installed: ``audiosr-jax-train --config=<stage>[:preset] ...``, the packaged config by name).

Trains (or resumes) one stage. Multi-host: ``--multihost`` calls ``jax.distributed.initialize()`` first
(TPU pod slices and SLURM clusters are detected from the environment). Errors a user can cause print one
line and exit with status 2.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "stage config file (audiosr_jax/configs/ldm.py, vae.py, vocoder.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard logs, config")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "join a multi-process job (pod slice, SLURM, or python -m audiosr_jax.launch)")
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "stop (with a checkpoint) after this many steps")


def _main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)

    from audiosr_jax.errors import UserError

    if _MULTIHOST.value:
        from audiosr_jax.runtime import initialize_distributed

        try:
            initialize_distributed()  # a pod / SLURM job, or `python -m audiosr_jax.launch`
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    from audiosr_jax.training.loop import train

    config = _CONFIG.value
    if config is None or not _WORKDIR.value:
        print("error: --config and --workdir are required", file=sys.stderr)
        return 2
    try:
        from audiosr_jax.runtime import enable_compilation_cache

        enable_compilation_cache()
        last = train(config, _WORKDIR.value, stop_after=_STOP_AFTER.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.info("done at step %d: %s", last["step"],
                 ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "step" and isinstance(v, float)))
    return 0


def main():
    from audiosr_jax.configs import resolve_config_flags

    sys.argv = resolve_config_flags(sys.argv)  # --config=ldm:tiny finds the packaged file
    try:
        app.run(lambda argv: sys.exit(_main(argv)))
    except SystemExit as e:
        return e.code


if __name__ == "__main__":
    sys.exit(main())
