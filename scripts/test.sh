#!/usr/bin/env bash
# Install audiosr-jax with its test extras into ./.venv and run the test suite (CPU only).
set -euo pipefail
. "$(dirname "$0")/venv.sh"
# The CPU build of PyTorch first (only the converter's .bin/.pth reader and the tests use it), from PyTorch's
# CPU index (PyPI's Linux torch is the multi-GB CUDA build), so nothing below can pull the CUDA one.
# TORCH_INDEX_URL points elsewhere (a mirror); a wheel in pip's find-links is taken as well.
python -m pip install -q --retries 1 torch==2.13.0 --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
python -m pip install -q -e '.[test]'
export JAX_PLATFORMS=cpu
python -m pytest -q -n 2 --durations=20 tests "$@"
