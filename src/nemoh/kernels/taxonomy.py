"""The verdict of one candidate kernel: a fixed failure taxonomy and the fields every report reads."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# the failure classes, in the order a candidate meets them
NO_CODE = "no_code"
SYNTAX_IMPORT = "syntax_or_import_error"
MISSING_MODEL_NEW = "missing_model_new"
TRITON_COMPILE = "triton_compile_error"
RUNTIME = "runtime_error"
SHAPE = "shape_mismatch"
NUMERIC = "numeric_mismatch"
TIMEOUT = "timeout"
INTEGRITY = "integrity_violation"
# not the candidate's fault: the reference cannot run here (memory, time, or it fails at these sizes); excluded
# from pass@k and fast_p denominators, reported separately, neutral as a reward
DOES_NOT_FIT = "does_not_fit"
FAILURE_CLASSES = (NO_CODE, SYNTAX_IMPORT, MISSING_MODEL_NEW, TRITON_COMPILE, RUNTIME, SHAPE, NUMERIC, TIMEOUT,
                   INTEGRITY, DOES_NOT_FIT)


@dataclass
class Verdict:
    problem: str
    sample: int = 0
    level: str = ""
    parsed: bool = False                 # a python block was found
    compiled: bool = False               # imported and ran to the end of a forward (kernels compiled)
    correct: bool = False
    failure: str | None = None           # one of FAILURE_CLASSES, None when correct
    detail: str = ""
    launches: int = 0                    # Triton launches per forward (the fewest over the trials)
    flags: list[str] = field(default_factory=list)   # integrity findings and warnings (e.g. suspicious speedup)
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    rel_l2_err: float | None = None      # ||out - ref|| / ||ref||, the worst trial
    trials: list[str] = field(default_factory=list)   # the trials that ran (seeded and transformed)
    shrink: dict[str, Any] = field(default_factory=dict)  # {"factor": F, "changed": {name: [old, new]}} if shrunk
    speedup_eager: float | None = None   # GPU only: eager reference time / candidate time
    speedup_compile: float | None = None  # GPU only: torch.compile reference time / candidate time
    timings_ms: dict[str, float] = field(default_factory=dict)
    speed_review: str | None = None      # "pending" above the suspicion threshold (no speed bonus), "cleared"
    mode: str = "interpret"              # "interpret" (CPU: correctness only) or "gpu" (correctness + timing)
    isolation: str = ""                  # how the network was cut off ("netns" or "audit-hook only")
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
