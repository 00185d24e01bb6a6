#!/usr/bin/env bash
# Build the PyTorch reference environment for AudioSR 0.0.7 (CPU only, offline after install).
#
#   bash tools/reference/build_venv.sh            # creates /work/main/.refenv (or $REFENV)
#
# Idempotent: an existing venv is reused and every step is re-checked. The recipe is
# docs/design.md §Reference environment:
# the reference pins numpy<=1.23.5 and librosa==0.9.2, so it cannot share the JAX venv.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
REFENV="${REFENV:-$REPO/.refenv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

say() { printf '[build_venv] %s\n' "$*"; }
die() { printf '[build_venv] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ! -x "$REFENV/bin/python" ]]; then
    say "creating venv $REFENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$REFENV"
else
    say "reusing venv $REFENV"
fi
PY="$REFENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
"$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 9), sys.version' || die "python too old"

# Pins that every later pip call must respect: above all, torch stays the CPU build.
CONSTRAINTS="$REFENV/reference-constraints.txt"
cat > "$CONSTRAINTS" <<'PINS'
torch==2.13.0+cpu
numpy==1.23.5
scipy==1.11.4
librosa==0.9.2
setuptools==69.5.1
transformers==4.30.2
tokenizers==0.13.3
huggingface_hub<0.25
pandas==2.0.3
PINS

# 1. torch 2.13.0 CPU (a local wheel where the machine has one; never the CUDA build from the index).
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__ == "2.13.0+cpu" else 1)' 2>/dev/null; then
    say "torch 2.13.0+cpu already installed"
else
    WHEEL="$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n1 || true)"
    if [[ -n "$WHEEL" ]]; then
        say "installing torch from $WHEEL"
        "${PIP[@]}" install "$WHEEL"
    else
        say "installing torch==2.13.0+cpu from the PyTorch CPU index"
        "${PIP[@]}" install "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
    fi
fi

# 2. numeric stack + librosa 0.9.2 (imports pkg_resources, hence setuptools<70) + the rest of audiosr's imports.
say "installing the pinned numeric/audio stack (pip prints nothing new when already satisfied)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" \
    "setuptools==69.5.1" "numpy==1.23.5" "scipy==1.11.4" "librosa==0.9.2" \
    "transformers==4.30.2" "tokenizers==0.13.3" "huggingface_hub<0.25" "pandas==2.0.3" \
    einops ftfy regex unidecode pillow matplotlib progressbar chardet soundfile pyyaml tqdm \
    "phonemizer==3.4.0" scikit-learn

# 3. packages whose declared dependencies would drag in CUDA torch / torchvision: no deps.
say "installing audiosr 0.0.7, torchaudio 2.11.0, timm 1.0.31, torchlibrosa 0.1.0 with --no-deps"
AUDIOSR_WHEEL="/work/refsrc/audiosr-0.0.7-py3-none-any.whl"
if [[ -f "$AUDIOSR_WHEEL" ]]; then AUDIOSR_SPEC="$AUDIOSR_WHEEL"; else AUDIOSR_SPEC="audiosr==0.0.7"; fi
"${PIP[@]}" install -q --no-deps -c "$CONSTRAINTS" \
    "$AUDIOSR_SPEC" "torchaudio==2.11.0" "timm==1.0.31" "torchlibrosa==0.1.0"

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# 4. torchaudio has no CPU build: move its CUDA-linked extension libraries aside -> pure-python mode.
TA_LIB="$SITE/torchaudio/lib"
DISABLED="$SITE/disabled_torchaudio_libs"
if compgen -G "$TA_LIB/*.so" >/dev/null; then
    mkdir -p "$DISABLED"
    say "moving torchaudio/lib/*.so to $DISABLED"
    mv -f "$TA_LIB"/*.so "$DISABLED"/
else
    say "torchaudio extension libraries already disabled"
fi

# 5. torchvision stub (only names imported at module level by audiosr/timm/CLAP; none is on the SR path).
say "installing the torchvision stub package"
rm -rf "$SITE/torchvision"
cp -r "$HERE/stubs/torchvision" "$SITE/torchvision"
find "$SITE/torchvision" -name __pycache__ -prune -exec rm -rf {} +

# 6. checks: CPU torch, no CUDA wheels, pinned versions, and audiosr importable offline with the patches.
say "checking the environment"
if "${PIP[@]}" list 2>/dev/null | grep -qiE '^nvidia-|^triton '; then
    die "CUDA packages found in $REFENV (pip list | grep nvidia): torch must stay the CPU build"
fi
(cd "$REPO" && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" - <<'CHECK'
import sys
sys.path.insert(0, "tools/reference")
import patches  # noqa: F401  (offline patches, before audiosr)
import numpy, scipy, librosa, torch, torchaudio, transformers
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert numpy.__version__ == "1.23.5", numpy.__version__
assert librosa.__version__ == "0.9.2", librosa.__version__
import audiosr
from audiosr.latent_diffusion.models.ddpm import LatentDiffusion  # noqa: F401
print("[build_venv] ok: python %s, torch %s, torchaudio %s, numpy %s, scipy %s, librosa %s, transformers %s"
      % (sys.version.split()[0], torch.__version__, torchaudio.__version__, numpy.__version__,
         scipy.__version__, librosa.__version__, transformers.__version__))
CHECK
) || die "the reference environment does not import (see the traceback above)"
say "done: $REFENV"
