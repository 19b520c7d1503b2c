#!/usr/bin/env bash
# Creates ./.venv with hat_jax (editable) and its test/experiment extras. Idempotent; needs Python >= 3.11.
# Usage: bash tools/setup.sh            (PYTHON=python3.12 bash tools/setup.sh to pick an interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "hat_jax needs Python >= 3.11; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=python3.11 (or newer)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
echo "[setup] installing hat_jax and dependencies into .venv (first run downloads ~700 MB of wheels)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,experiments]'
echo "[setup] done: $(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"
