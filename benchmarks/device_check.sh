#!/usr/bin/env bash
# The accelerator check in one command, from a bare machine: benchmarks/device_check.py's figures.
#
#   bash benchmarks/device_check.sh [--dry-run] [--out FILE.json] [--budget-s 400]
#
# Run from anywhere (it works in the repo root). Uses $PYTHON (default python3). Unless --dry-run, the
# wheels in $AUDIOSR_DEVICE_WHEELS (default .device_wheels/, filled by benchmarks/fetch_device_wheels.sh on a
# networked machine) whose distributions this Python lacks are installed offline into a private folder put
# on PYTHONPATH (never from the network, never over what the image has). The repo itself goes on PYTHONPATH
# (no pip install: building it would need the network). --dry-run: CPU, tiny width, nothing installed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
WHEELS=${AUDIOSR_DEVICE_WHEELS:-$REPO/.device_wheels}
SITE=${AUDIOSR_DEVICE_SITE:-${TMPDIR:-/tmp}/audiosr_device_site}

dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done

# Wheel files in $1 whose distribution is not installed for $PY (one path a line).
missing_wheels() {
  "$PY" - "$1" <<'PYEOF'
import importlib.metadata as md, pathlib, re, sys
for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(w)
PYEOF
}

if [ "$dry" = 0 ] && [ -d "$WHEELS" ]; then
  mapfile -t need < <(missing_wheels "$WHEELS")
  if [ "${#need[@]}" -gt 0 ]; then
    echo "[device_check.sh] installing ${#need[@]} wheel(s) from $WHEELS into $SITE: $(for w in "${need[@]}"; do basename "$w" | cut -d- -f1; done | tr '\n' ' ')"
    pip_install() {
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --find-links "$WHEELS" --target "$SITE" "$@"
    }
    if ! pip_install "${need[@]}"; then  # one bad wheel fails them all: then one at a time
      for w in "${need[@]}"; do
        pip_install "$w" || echo "[device_check.sh] could not install $(basename "$w"): going on without it"
      done
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "[device_check.sh] every wheel in $WHEELS is already installed"
  fi
elif [ "$dry" = 0 ]; then
  echo "[device_check.sh] no wheel folder at $WHEELS: using what $PY has"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# More of the GPU for the largest training batch than JAX's default 75 % pool (the caller's value wins).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export PYTHONUNBUFFERED=1
exec "$PY" -u "$REPO/benchmarks/device_check.py" "$@"
