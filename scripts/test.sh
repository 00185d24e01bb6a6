#!/usr/bin/env bash
# Install audiosr-jax with its test extras into ./.venv and run the test suite (CPU only).
set -euo pipefail
. "$(dirname "$0")/venv.sh"
# The CPU build of PyTorch first (only the converter's .bin/.pth reader and the tests use it), so that
# nothing below can pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test]'
export JAX_PLATFORMS=cpu
python -m pytest -q -n 2 --durations=20 tests "$@"
