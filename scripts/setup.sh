#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with PyTorch installed FIRST
# (so no dependency can pull a multi-GB CUDA build), then tdmpc-prune with every extra.
#   TORCH_SPEC   the torch requirement to install first (default: torch==2.13.0, the CPU wheel here;
#                on a CUDA machine use e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
#   PYTHON       the interpreter that creates the venv (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[all]"
echo "set-up done: $(.venv/bin/python -c 'import torch, tdmpc_prune; print("torch", torch.__version__, "| tdmpc_prune", tdmpc_prune.__version__)')"
