#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install the project.
# torch is installed first, pinned, so pip takes the CPU build instead of resolving a
# multi-GB CUDA build as a dependency of something else.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.installed"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location -e ".[dev]"
touch "$stamp"
