# Sourced by the scripts here: create ./.venv if missing (with $PYTHON or python3), activate it, update pip.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
