"""Where an engine step's time goes: wall time per phase (scheduling, model, sampling, detokenisation), summed
over steps. Set `LLM.profile = StepProfile()` to record; `bench/bench_engine.py --profile` prints it."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PHASES = ("scheduling", "model", "sampling", "detokenisation")


class StepProfile:
    def __init__(self, device: torch.device | str = "cpu"):
        self.sync = torch.device(device).type == "cuda"   # a GPU phase ends when its kernels do
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - t

    def split(self) -> dict[str, float]:
        """Milliseconds per step for each phase, and `other` (bookkeeping) out of the step's total."""
        per = {p: self.seconds.get(p, 0.0) * 1e3 / max(self.steps, 1) for p in PHASES}
        per["other"] = self.seconds.get("step", 0.0) * 1e3 / max(self.steps, 1) - sum(per.values())
        return per
