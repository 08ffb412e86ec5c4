#!/usr/bin/env bash
# Create .venv (if missing) and install lr_kernels + lr_train into it, with the dev tools, at the versions
# pinned in constraints.txt (the same set CI tests). torch is pinned to 2.13.0 unless one is already
# installed in the venv: pip then takes the CPU wheel on CPU-only machines here, and PyPI's default build
# elsewhere. Set LR_TORCH_SPEC to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q -c constraints.txt --upgrade pip setuptools wheel
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${LR_TORCH_SPEC:-torch==2.13.0}"
fi
# numpy before the build: setup.py imports torch, which warns "Failed to initialize NumPy" without it.
python -m pip install -q -c constraints.txt ninja numpy
python -m pip install -q -c constraints.txt --no-build-isolation -e ".[dev]"
