#!/usr/bin/env bash
# Install audiosr-jax into ./.venv and run the end-to-end demo (python -m audiosr_jax.demo).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
python -m audiosr_jax.demo "$@"
