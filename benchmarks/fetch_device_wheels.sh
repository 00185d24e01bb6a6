#!/usr/bin/env bash
# Fetch, on a networked machine, the wheels that benchmarks/device_check.sh installs offline on an accelerator
# machine: the distributions audiosr-jax imports on the check's path (inference and the three train steps)
# that the device image (Python 3.12, x86-64, jax/flax/optax/orbax/tensorstore/etils/numpy/scipy/torch,
# numba, scikit-learn, joblib, msgpack, tqdm, pyyaml, cloudpickle, protobuf, psutil...) lacks.
#
#   bash benchmarks/fetch_device_wheels.sh [FOLDER]      # default .device_wheels/ (git-ignored)
#
# Each is pinned (the versions the project's tests run with) and fetched without its dependencies: the ones
# the image lacks are listed here too, so nothing the image has is shadowed. Prints the folder's total,
# which must stay well under the device tool's 64 MiB for the whole working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.device_wheels}
PY=${PYTHON:-python3}

WHEELS=(
  ml-collections==1.1.0   # the training configs
  librosa==0.11.0         # the mel filterbank (audio.mel_filterbank), on every path
  decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.9 audioread==3.1.0 soxr==1.1.0   # librosa's imports
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12   # audio I/O (imported by audiosr_jax.audio)
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0   # the training batch loader
)

mkdir -p "$DEST"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any \
  -d "$DEST" "${WHEELS[@]}"

ls -1 "$DEST"/*.whl
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $((total / 1024)) KiB ($(awk "BEGIN{printf \"%.1f\", $total/1048576}") MiB) in $DEST"
if [ "$total" -ge $((64 * 1024 * 1024)) ]; then
  echo "over the 64 MiB the device tool carries" >&2
  exit 1
fi
