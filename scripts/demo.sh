#!/usr/bin/env bash
# Creates .venv if missing, installs fedjax_mm, runs the demo benchmark.
# Usage: scripts/demo.sh [--workdir runs/demo] [--rounds 200]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/python experiments/synthetic_demo.py "$@"
