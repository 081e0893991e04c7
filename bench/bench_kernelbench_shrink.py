"""KernelBench level 1 through the verifier on a CPU: how many reference problems run and fit the sandbox at their
real sizes and under `--shrink`, and the time per candidate. The candidate for each problem is its own reference
renamed `ModelNew` (torch ops, no kernels), so both processes run every trial and the verdict is an
integrity_violation whenever the problem fits; what is counted is fit (not does_not_fit) and seconds.

    python bench/bench_kernelbench_shrink.py PATH/TO/KernelBench [--every 4] [--shrink 64] [--workers 2]

PATH is a checkout (fetched, never committed). `--every N` keeps every N-th problem (a sample: the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path


def run(problems, shrink: int, timeout: float, workers: int, mem_gb: float) -> dict:
    from nemoh.kernels import SandboxConfig, verify_traces
    with tempfile.TemporaryDirectory() as tmp:
        traces = Path(tmp) / "t.jsonl"
        traces.write_text("".join(json.dumps({"problem": p.name, "sample": 0, "level": p.level, "problem_code": p.code,
                                              "code": re.sub(r"\bModel\b", "ModelNew", p.code)}) + "\n"
                                  for p in problems))
        t0 = time.perf_counter()
        verdicts = verify_traces(traces, Path(tmp) / "v.jsonl", SandboxConfig(timeout_s=timeout, shrink=shrink,
                                                                              mem_gb=mem_gb), workers, progress=False)
        wall = time.perf_counter() - t0
    fit = [v for v in verdicts if v.failure != "does_not_fit"]
    return {"shrink": shrink, "problems": len(verdicts), "fit": len(fit),
            "ran_all_trials": sum(v.compiled for v in fit),
            "classes": dict(Counter(v.failure or "correct" for v in verdicts)),
            "median_s_per_candidate": statistics.median(v.seconds for v in verdicts) if verdicts else None,
            "wall_s": wall, "candidates_per_min": 60 * len(verdicts) / wall,
            "unfit": {v.problem: v.detail[:120] for v in verdicts if v.failure == "does_not_fit"},
            "not_run": {v.problem: v.detail[:120] for v in fit if not v.compiled}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kernelbench")
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--shrink", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--mem-gb", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from nemoh.kernels import load_problems
    problems = load_problems(f"{args.kernelbench}@level1")[::args.every]
    print(f"{len(problems)} level-1 problems (every {args.every}th)")
    for s in args.shrink:
        print(json.dumps(run(problems, s, args.timeout, args.workers, args.mem_gb)), flush=True)


if __name__ == "__main__":
    main()
