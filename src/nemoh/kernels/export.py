"""`nemoh kernels export`: verified traces -> an SFT chat dataset that `nemoh sft` reads as it is.

Each row: `messages` = [user: the prompt, assistant: the answer with the code, `reasoning_content`: the model's
thinking], plus `provenance` (problem, model, sampling, versions, verdict, content hash). Only clean verdicts are
kept (correct, no integrity flags), with `--min-speedup S > 0` also a measured GPU speedup >= S; identical code for
the same problem is kept once. The file is written atomically.
"""
from __future__ import annotations

import hashlib
from collections import Counter
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


def _why_not(v: Verdict | None, t: dict, min_speedup: float) -> str | None:
    """Why a trace is not exported (None: it is)."""
    if v is None:
        return "no verdict"
    if not t.get("code"):
        return "no code"
    if not v.correct or v.failure:
        return "not correct"
    if any(not f.startswith("torch.compile baseline") for f in v.flags):
        return "flagged"
    if min_speedup > 0 and v.speedup_eager is None:
        return "no GPU timing (CPU verdicts have no speedup: --min-speedup keeps none of them)"
    if min_speedup > 0 and v.speedup_eager is not None and v.speedup_eager < min_speedup:
        return f"speedup below {min_speedup:g}"
    if min_speedup > 0 and v.speed_review == "pending":
        return "suspicious speedup not cleared"
    return None


def _prompt(t: dict) -> str:
    """The trace's prompt, or (minimal traces carry only problem, sample, problem_code) the zero-shot one."""
    if t.get("prompt"):
        return t["prompt"]
    from .problems import Problem
    from .prompts import load_template, render
    return render(load_template("zero-shot"), Problem(t["problem"], t.get("level", ""), 0, t["problem_code"]))


def build_dataset(traces: list[dict], verdicts: list[Verdict], min_speedup: float = 0.0,
                  skipped: Counter | None = None) -> list[dict[str, Any]]:
    """Rows for the clean verdicts; `skipped` (if given) counts why the others were left out."""
    judged = {(v.problem, v.sample): v for v in verdicts}
    versions = _versions()
    rows, seen = [], set()
    skipped = skipped if skipped is not None else Counter()
    for t in traces:
        v = judged.get((t["problem"], int(t["sample"])))
        why = _why_not(v, t, min_speedup)
        if why:
            skipped[why] += 1
            continue
        assert v is not None  # _why_not answers "no verdict" for None
        digest = hashlib.sha256(f"{t['problem']}\n{' '.join(t['code'].split())}".encode()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        assistant: dict[str, Any] = {"role": "assistant", "content": t.get("answer") or f"```python\n{t['code']}```"}
        if t.get("reasoning"):
            assistant["reasoning_content"] = t["reasoning"]
        rows.append({"messages": [{"role": "user", "content": _prompt(t)}, assistant],
                     "provenance": {"problem": t["problem"], "level": t.get("level", ""), "sample": t["sample"],
                                    "model": t.get("model"), "sampling": t.get("sampling"), "versions": versions,
                                    "verdict": {"mode": v.mode, "launches": v.launches, "max_abs_err": v.max_abs_err,
                                                "speedup_eager": v.speedup_eager,
                                                "speedup_compile": v.speedup_compile},
                                    "problem_sha256": t.get("problem_sha256"), "sha256": digest}})
    return rows


def export(traces_path: str | Path, verdicts_path: str | Path, out: str | Path, min_speedup: float = 0.0,
           skipped: Counter | None = None) -> int:
    rows = build_dataset(read_traces(traces_path), read_verdicts(verdicts_path), min_speedup, skipped)
    write_jsonl_atomic(out, rows)
    return len(rows)
