#!/usr/bin/env bash
# Lint (ruff: style, import order, line length 120) and type-check (mypy) the package. .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests bench
.venv/bin/mypy
