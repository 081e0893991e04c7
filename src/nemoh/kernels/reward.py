"""The verifier as an RL reward (`--reward.function kernelbench`): one sandbox per response, a group verified
concurrently, the verdict shaped into a score.

The label names the problem: a built-in name (`1_SiLU`, `nemoh/1_SiLU`) or the problem's source itself.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .judge import verify_code
from .problems import load_problems
from .prompts import extract_code, split_reasoning
from .sandbox import SandboxConfig
from .taxonomy import DOES_NOT_FIT, INTEGRITY, NUMERIC, RUNTIME, SHAPE, Verdict


@dataclass(frozen=True)
class RewardShape:
    integrity: float = -1.0      # a cheat is worse than nothing
    ran: float = 0.1             # compiled and ran, wrong output (shape or values)
    correct: float = 1.0
    speed_bonus: float = 0.5     # GPU only: + bonus * clip(log2(speedup vs eager), 0, 1), once cleared if suspicious
    does_not_fit: float = 0.0    # the problem cannot be checked here: neutral (a whole group gets it, so no signal)


def score(v: Verdict, shape: RewardShape = RewardShape()) -> float:
    if v.failure == INTEGRITY:
        return shape.integrity
    if v.failure == DOES_NOT_FIT:
        return shape.does_not_fit
    if v.correct:
        bonus = 0.0
        if v.speedup_eager and v.speed_review != "pending":
            bonus = shape.speed_bonus * min(1.0, max(0.0, math.log2(v.speedup_eager)))
        return shape.correct + bonus
    if v.failure in (SHAPE, NUMERIC) or (v.failure == RUNTIME and v.compiled):
        return shape.ran
    return 0.0


def _problem_code(label: str) -> str:
    if "class Model" in label:
        return label
    for p in load_problems("builtin"):
        if label in (p.name, p.stem):
            return p.code
    raise ValueError(f"kernelbench reward: label {label[:60]!r} is neither a built-in problem nor problem source")


def kernelbench_reward(responses: list[str], label: str, cfg: SandboxConfig | None = None,
                       shape: RewardShape = RewardShape(), workers: int = 2) -> list[float]:
    """Scores for one group of responses to the same problem. Thread-safe: nothing is shared between calls."""
    code = _problem_code(str(label))
    cands = [extract_code(split_reasoning(r)[1]) for r in responses]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        verdicts = list(pool.map(lambda c: verify_code(code, c, cfg=cfg), cands))
    return [score(v, shape) for v in verdicts]
