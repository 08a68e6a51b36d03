# Sourced by the user-facing scripts (demo.sh, demo_real.sh, test.sh), from the
# repository root: `ensure_venv SPEC` creates .venv with $PYTHON (default
# python3) if it is missing, then installs fedjax_mm as SPEC (e.g. '.[test]').
ensure_venv() {
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($python --version)"
    "$python" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$1"
}
