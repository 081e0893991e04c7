#!/usr/bin/env bash
# Install, then run the main job on the built-in tiny model: a model smoke test (checkpoint, forward, greedy
# decode), then SFT warm start + GRPO on a generated task, printing held-out accuracy before and after RL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nemoh demo
exec .venv/bin/nemoh rl configs/demo-tiny.toml "$@"
