#!/usr/bin/env bash
# Install, then run the main job on the built-in tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nemoh demo "$@"
