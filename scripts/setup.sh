#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with PyTorch installed FIRST
# (so no dependency can pull a multi-GB CUDA build), then tdmpc-prune with every extra.
#   TORCH_SPEC   the torch requirement to install first (default: torch==2.13.0, the CPU wheel here;
#                on a CUDA machine use e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
#   PYTHON       the interpreter that creates the venvs (default: python3)
#   OFFICIAL_ENV  1 (default) also builds .venv-official: the official tdmpc2 pins of
#                scripts/official-requirements.txt (tensordict 0.8.3, torchrl 0.8.1, numpy 1.24.4, ...)
#                with the same torch and tdmpc-prune without extras (so no matplotlib); the test
#                suite runs the plugin tests (tests/official) in it. 0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[all]"
if [ "${OFFICIAL_ENV:-1}" != 0 ]; then
  if [ ! -x .venv-official/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv-official
  fi
  .venv-official/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  # shellcheck disable=SC2086
  .venv-official/bin/python -m pip install --quiet --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
  .venv-official/bin/python -m pip install --quiet --disable-pip-version-check -e . -r scripts/official-requirements.txt
  echo "official-pins env: $(.venv-official/bin/python -c 'import tensordict, torchrl, numpy; print("tensordict", tensordict.__version__, "| torchrl", torchrl.__version__, "| numpy", numpy.__version__)' 2>/dev/null)"
fi
echo "set-up done: $(.venv/bin/python -c 'import torch, tdmpc_prune; print("torch", torch.__version__, "| tdmpc_prune", tdmpc_prune.__version__)')"
