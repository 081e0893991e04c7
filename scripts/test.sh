#!/usr/bin/env bash
# Install, then run the test suite: the default set in parallel (pytest-xdist, one worker per core), then with
# `--all` (what CI runs) the slow multi-process tests, one at a time (each already uses several processes).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
all=0
if [ "${1:-}" = "--all" ]; then all=1; shift; fi
bash scripts/setup.sh
workers=${NEMOH_TEST_WORKERS:-$(nproc)}
.venv/bin/python -m pytest -n "$workers" -m "not slow" "$@"
if [ "$all" = 1 ]; then
  .venv/bin/python -m pytest -m slow "$@"
fi
