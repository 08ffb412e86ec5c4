#!/usr/bin/env bash
# Set up .venv and run the whole test suite: lint, unit tests (Triton kernels in the interpreter),
# GPU compilation checks (PTX/SASS for sm_80 and sm_90, no GPU needed) and the CUDA source build check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q "$@"
