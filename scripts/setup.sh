#!/usr/bin/env bash
# Set up voxforge in ./.venv on a fresh machine (CPU build of PyTorch; no CUDA wheels).
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pin torch first so nothing later pulls the multi-GB CUDA build from the index.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
