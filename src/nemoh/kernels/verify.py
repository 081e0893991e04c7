"""`nemoh kernels verify`: every trace's code through its own sandbox, verdicts appended to a JSONL log.

Candidates run `workers` at a time (each its own process); a rerun skips the (problem, sample) pairs already
judged, so a long verification resumes where it stopped.
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..data import ErrorLog, read_rows, write_jsonl_atomic
from .generate import done_pairs, progress_bar
from .judge import verify_code
from .sandbox import SandboxConfig
from .taxonomy import Verdict


def read_traces(path: str | Path) -> list[dict]:
    traces = []
    for row in read_rows(path, ErrorLog("raise")):
        for key in ("problem", "sample", "problem_code"):
            if key not in row.data:
                raise ValueError(f"{row.where}: a trace needs the field {key!r}")
        traces.append(row.data)
    return traces


def verify_traces(traces_path: str | Path, out_path: str | Path, cfg: SandboxConfig | None = None,
                  workers: int = 2, progress: bool = True) -> list[Verdict]:
    import importlib.util
    if importlib.util.find_spec("triton") is None:
        raise ValueError("the verifier runs Triton kernels: install triton (pip install 'nemoh[kernels]')")
    cfg = cfg or SandboxConfig()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_pairs(out)
    todo = [t for t in read_traces(traces_path) if (t["problem"], int(t["sample"])) not in done]
    lock = threading.Lock()
    verdicts: list[Verdict] = []
    bar = progress_bar("verifying", progress, len(todo))
    with out.open("a", encoding="utf-8") as f:
        def one(t: dict) -> None:
            v = verify_code(t["problem_code"], t.get("code"), t["problem"], int(t["sample"]), t.get("level", ""), cfg)
            with lock:
                verdicts.append(v)
                f.write(json.dumps(v.to_dict()) + "\n")
                f.flush()
                if bar:
                    bar[0].advance(bar[1])
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                list(pool.map(one, todo))
        finally:
            if bar:
                bar[0].stop()
    return verdicts


def read_verdicts(path: str | Path) -> list[Verdict]:
    return [Verdict.from_dict(r.data) for r in read_rows(path, ErrorLog("raise"))]



def clear_speedup(path: str | Path, problem: str, sample: int) -> Verdict:
    """A person looked at a suspicious speedup and found it real: the verdict's review becomes "cleared" (the reward
    and `export --min-speedup` count its speedup from then on). The verdicts file is rewritten atomically."""
    verdicts = read_verdicts(path)
    hits = [v for v in verdicts if v.problem == problem and v.sample == sample]
    if not hits:
        raise ValueError(f"{path}: no verdict for problem {problem!r} sample {sample}")
    if hits[-1].speed_review != "pending":
        raise ValueError(f"{path}: {problem} sample {sample} has no speedup waiting for review "
                         f"(speed_review={hits[-1].speed_review!r})")
    for v in hits:
        v.speed_review = "cleared"
    write_jsonl_atomic(path, [v.to_dict() for v in verdicts])
    return hits[-1]
