"""Run an ablation grid: python ablate.py --grid=audiosr_jax/configs/ablations/<name>.py [--workdir=DIR] [--cell=NAME]
[--report_only] [--grid.eval.clips=4 ...] (installed: audiosr-jax-ablate --grid=ablations/<name>). See
audiosr_jax/lab/ablation.py."""

import sys

from absl import app, flags
from ml_collections import config_flags

_GRID = config_flags.DEFINE_config_file("grid", None, "ablation grid config (audiosr_jax/configs/ablations/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (default out/ablations/<grid name>)")
_CELL = flags.DEFINE_string("cell", None, "run only this cell (its name or folder name), then update the report")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "only gather finished cells into the report")


def _main(argv):
    del argv
    import logging
    import os

    logging.getLogger("absl").setLevel(logging.ERROR)

    from audiosr_jax.lab import ablation
    from audiosr_jax.runtime import enable_compilation_cache

    grid = _GRID.value
    if grid is None:
        print("error: --grid is required", file=sys.stderr)
        return 2
    enable_compilation_cache()
    workdir = _WORKDIR.value or os.path.join("out", "ablations", grid.name)
    ablation.run(grid, workdir, only_cell=_CELL.value, report_only=_REPORT_ONLY.value)
    return 0


def main():
    from audiosr_jax.configs import resolve_config_flags

    sys.argv = resolve_config_flags(sys.argv)  # --grid=ablations/schedule_x_param finds the packaged file
    try:
        app.run(lambda argv: sys.exit(_main(argv)))
    except SystemExit as e:
        return e.code


if __name__ == "__main__":
    sys.exit(main())
