"""RL must keep learning: the default recipe (configs/demo-tiny.toml) on last_letter, a task it was not tuned for,
shortened to 50 iterations. Fixed seed and a fixed thread count; the margin comes from the seed spread measured in
bench/RESULTS.md ("RL across tasks") and docs/rl.md."""
from pathlib import Path

import pytest
import torch

from nemoh.rl.config import RLConfig
from nemoh.rl.trainer import RLTrainer
from nemoh.train.config import load_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "demo-tiny.toml"
# Measured from this warm start (28.1% held-out with one intra-op thread): RL seed 0 -> 41.4% (+13.3 points; this
# test reproduces it), RL seed 1 -> 30.5% (+2.4): the spread between RL seeds is ~11 points, so a run that drifts
# like another seed (other BLAS, other CPU) may gain as little as ~2 points. A loop that stops learning gains nothing
# or loses points (without dynamic sampling it fell to 12.5%, -15.6). So: held-out accuracy must rise at all.
# Not a promise for every warm start: from the stronger two-thread warm starts (44.5-47.7%) 50 iterations of the
# recipe measured -2.3 +- 1.1 points on last_letter (seeds 0, 1; docs/rl.md), the first updates cost more than 50
# iterations win back. The session-3 "regression" (47.7% -> 44.5%, xfail) was that thread count, not the code: the
# commits before and after the merges give the same numbers at the same thread count.
MARGIN = 0.0


@pytest.fixture
def one_thread():
    """The 300-step warm start is chaotic in the reduction order: the same commit and seed reach 28.1% held-out with
    one intra-op thread and 47.7% with two (measured, issue 18). Pinned here so the test sees the same starting
    policy serially (2 threads) and under xdist (1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow  # ~40 s on an idle 2-core machine: a 300-step warm start and 50 RL iterations on one thread
def test_default_recipe_learns_last_letter(tmp_path, one_thread):
    cfg = load_config(str(RECIPE), ["--checkpoint.dir", str(tmp_path), "--data.prompts", "builtin:last_letter",
                                    "--train.rollouts", "50", "--train.eval_every", "0", "--algo.log_kl", "false"],
                      cls=RLConfig)
    out = RLTrainer(cfg, show_progress=False).run()
    gain = out["eval_accuracy_after"] - out["eval_accuracy_before"]
    assert gain > MARGIN, (out["eval_accuracy_before"], out["eval_accuracy_after"])
