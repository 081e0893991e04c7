"""`nemoh kernels report`: the funnel, fast_p, pass@k, geometric-mean speedup, per-level and per-failure tables.

fast_p (KernelBench): the share of samples that are correct AND faster than eager PyTorch by more than p
(fast_0 = correct). pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k) per problem (n samples, c correct),
averaged over problems. Speedups exist only for GPU verdicts; on a CPU (Triton interpreter) fast_p for p > 0 and
the speedups are reported as n/a, not as zero.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .taxonomy import DOES_NOT_FIT, FAILURE_CLASSES, Verdict


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def summarize(verdicts: list[Verdict], ps: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0)) -> dict[str, Any]:
    """`does_not_fit` verdicts (the problem, not the candidate) are left out of every rate and counted apart."""
    unfit = [v for v in verdicts if v.failure == DOES_NOT_FIT]
    verdicts = [v for v in verdicts if v.failure != DOES_NOT_FIT]
    n = len(verdicts)
    timed = [v for v in verdicts if v.mode == "gpu"]
    correct = [v for v in verdicts if v.correct]
    funnel = {"samples": n, "parsed": sum(v.parsed for v in verdicts), "compiled": sum(v.compiled for v in verdicts),
              "correct": len(correct),
              "faster_than_eager":
                  sum(bool(v.correct and (v.speedup_eager or 0) > 1) for v in verdicts) if timed else None}
    fast: dict[str, float | None] = {}
    for p in ps:
        if p == 0:
            fast["fast_0"] = len(correct) / n if n else 0.0
        else:
            fast[f"fast_{p:g}"] = (sum(bool(v.correct and (v.speedup_eager or 0) > p) for v in timed) / len(timed)
                                   if timed else None)
    by_problem: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_problem[v.problem].append(v)
    kmax = min((len(vs) for vs in by_problem.values()), default=0)
    pass_k = {}
    for k in sorted({1, 5, 10, kmax} - {0}):
        if k <= kmax:
            pass_k[f"pass@{k}"] = sum(pass_at_k(len(vs), sum(x.correct for x in vs), k)
                                      for vs in by_problem.values()) / len(by_problem)
    speedups = [v.speedup_eager for v in correct if v.speedup_eager]
    geo = math.exp(sum(math.log(s) for s in speedups) / len(speedups)) if speedups else None
    levels: dict[str, dict[str, Any]] = {}
    for level in sorted({v.level for v in verdicts}):
        vs = [v for v in verdicts if v.level == level]
        levels[level] = {"samples": len(vs), "correct": sum(v.correct for v in vs),
                         "fast_0": sum(v.correct for v in vs) / len(vs)}
    failures = Counter(v.failure for v in verdicts + unfit if v.failure)
    return {"funnel": funnel, "fast": fast, "pass_at_k": pass_k, "geomean_speedup_eager": geo,
            "levels": levels, "failures": {c: failures.get(c, 0) for c in FAILURE_CLASSES},
            "mode": "gpu" if timed else "interpret (CPU: correctness only, no timings)",
            "flagged": sum(bool(v.flags) for v in verdicts),
            "speed_review_pending": sum(v.speed_review == "pending" for v in verdicts),
            "does_not_fit": {"samples": len(unfit), "problems": sorted({v.problem for v in unfit})}}


def print_report(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    console.print(f"[bold]KernelBench report[/bold] — mode: {summary['mode']}")
    unfit = summary["does_not_fit"]
    if unfit["samples"]:
        console.print(f"{unfit['samples']} samples of {len(unfit['problems'])} problems do not fit this sandbox "
                      "(left out of every rate below)")
    t = Table("stage", "samples", "share")
    total = summary["funnel"]["samples"] or 1
    for k, val in summary["funnel"].items():
        t.add_row(k, "n/a" if val is None else str(val), "n/a" if val is None else f"{val / total:.1%}")
    console.print(t)
    t = Table("metric", "value")
    for k, val in {**summary["fast"], **summary["pass_at_k"],
                   "geomean speedup vs eager": summary["geomean_speedup_eager"]}.items():
        t.add_row(k, "n/a" if val is None else f"{val:.3f}")
    console.print(t)
    t = Table("level", "samples", "correct", "fast_0")
    for level, row in summary["levels"].items():
        t.add_row(level, str(row["samples"]), str(row["correct"]), f"{row['fast_0']:.1%}")
    console.print(t)
    t = Table("failure class", "samples")
    for cls, count in summary["failures"].items():
        t.add_row(cls, str(count))
    console.print(t)


def plot_report(summary: dict[str, Any], path: str | Path) -> Path:
    """Two panels: the funnel and the failure classes. Written atomically."""
    import os

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    funnel = {k: v for k, v in summary["funnel"].items() if v is not None}
    a.bar(list(funnel), list(funnel.values()), color="#76b900")
    a.set_title("funnel")
    a.tick_params(axis="x", rotation=30)
    fails = summary["failures"]
    b.barh(list(fails), list(fails.values()), color="#555555")
    b.set_title("failure classes")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
