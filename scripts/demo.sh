#!/usr/bin/env bash
# Install audiosr-jax into ./.venv and run the end-to-end demo (python -m audiosr_jax.lab.demo).
set -euo pipefail
. "$(dirname "$0")/venv.sh"
python -m pip install -q -e .
python -m audiosr_jax.lab.demo "$@"
