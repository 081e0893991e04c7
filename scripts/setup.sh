#!/usr/bin/env bash
# Create .venv (if needed) and install nemoh with its test extras. torch is pinned to 2.13.0 here only: on these
# machines that is the CPU build on local disk; the package itself accepts any torch>=2.5 (CUDA builds included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==${NEMOH_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
