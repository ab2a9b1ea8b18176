#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install the project.
# torch is installed first, pinned, so pip takes the CPU build instead of resolving a
# multi-GB CUDA build as a dependency of something else. Re-running is cheap: a stamp
# newer than pyproject.toml means the environment is current.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.installed"
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
  exit 0
fi
echo "Installing into $VENV (a few minutes on a fresh machine)..."
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip_install() {
  # Some machines list local package folders that may not exist; pip warns once per
  # package about them, which buries real errors.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install "torch==${TORCH_VERSION:-2.13.0}"
pip_install -e ".[dev]"
touch "$stamp"
