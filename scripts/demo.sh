#!/usr/bin/env bash
# Creates .venv if missing, installs fedjax_mm, runs the Fed-MA demo:
# FedAvg aligning a projector between frozen towers on the synthetic world,
# 1,000 clients (Dirichlet concept skew and IID), 100 per round, against the
# untrained-projector floor and the centralized ceiling. Writes
# runs/demo/results.md and runs/demo/accuracy.png.
# Usage: scripts/demo.sh [--workdir runs/demo] [--rounds 30] [--partitions dirichlet,iid]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv .
exec .venv/bin/python experiments/fedma_demo.py "$@"
