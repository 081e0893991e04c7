"""`nemoh kernels export`: verified traces -> an SFT chat dataset that `nemoh sft` reads as it is.

Each row: `messages` = [user: the prompt, assistant: the answer with the code, `reasoning_content`: the model's
thinking], plus `provenance` (problem, model, sampling, versions, verdict, content hash). Only clean verdicts are
kept (correct, no integrity flags), with `--min-speedup S > 0` also a measured GPU speedup >= S; identical code for
the same problem is kept once. The file is written atomically.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..data import write_jsonl_atomic
from .taxonomy import Verdict
from .verify import read_traces, read_verdicts


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for pkg in ("nemoh", "torch", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _keep(v: Verdict, min_speedup: float) -> bool:
    if not v.correct or v.failure or any(not f.startswith("torch.compile baseline") for f in v.flags):
        return False
    return min_speedup <= 0 or (v.speedup_eager is not None and v.speedup_eager >= min_speedup)


def build_dataset(traces: list[dict], verdicts: list[Verdict], min_speedup: float = 0.0) -> list[dict[str, Any]]:
    judged = {(v.problem, v.sample): v for v in verdicts}
    versions = _versions()
    rows, seen = [], set()
    for t in traces:
        v = judged.get((t["problem"], int(t["sample"])))
        if v is None or not _keep(v, min_speedup) or not t.get("code"):
            continue
        digest = hashlib.sha256(f"{t['problem']}\n{' '.join(t['code'].split())}".encode()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        assistant: dict[str, Any] = {"role": "assistant", "content": t.get("answer") or f"```python\n{t['code']}```"}
        if t.get("reasoning"):
            assistant["reasoning_content"] = t["reasoning"]
        rows.append({"messages": [{"role": "user", "content": t["prompt"]}, assistant],
                     "provenance": {"problem": t["problem"], "level": t.get("level", ""), "sample": t["sample"],
                                    "model": t.get("model"), "sampling": t.get("sampling"), "versions": versions,
                                    "verdict": {"mode": v.mode, "launches": v.launches, "max_abs_err": v.max_abs_err,
                                                "speedup_eager": v.speedup_eager,
                                                "speedup_compile": v.speedup_compile},
                                    "problem_sha256": t.get("problem_sha256"), "sha256": digest}})
    return rows


def export(traces_path: str | Path, verdicts_path: str | Path, out: str | Path, min_speedup: float = 0.0) -> int:
    rows = build_dataset(read_traces(traces_path), read_verdicts(verdicts_path), min_speedup)
    write_jsonl_atomic(out, rows)
    return len(rows)
