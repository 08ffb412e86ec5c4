#!/usr/bin/env bash
# Re-resolve the dependency ranges of setup.py in a throw-away venv and rewrite constraints.txt with what
# pip picks today. Run it on a schedule (see README), then run the tests and commit the new file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
# shellcheck disable=SC1091
source "$tmp/venv/bin/activate"
python -m pip install -q --upgrade pip setuptools wheel
python -m pip install -q "${LR_TORCH_SPEC:-torch==2.13.0}" ninja numpy
python -m pip install -q --no-build-isolation ".[dev]"
{
  sed -n '1,/^pip==/p' constraints.txt | sed '$d'
  python -m pip list --format=freeze | grep -i -E '^(pip|setuptools|wheel)=='
  python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|lr-kernels|lr_kernels)([=@ ]|$)'
} > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" constraints.txt
echo "constraints.txt refreshed; now run: bash scripts/test.sh"
