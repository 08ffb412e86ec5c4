#!/usr/bin/env bash
# Set up .venv and run the end-to-end demo on a tiny model (CPU, no download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
python -m lr_train demo "$@"
