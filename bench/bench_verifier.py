"""Verifier throughput: candidates verified per minute (each in its own sandboxed process), over nemoh's shipped
solutions and known cheats, for 1 and 2 concurrent sandboxes. The peer is the bare cost of the same work without a
sandbox: importing the candidate and running the same trials in this process (no isolation, no integrity checks).

    python bench/bench_verifier.py [--rounds 2] [--workers 1 2] [--all]

By default the candidate set is the one the verifier had before the probes and the second cheat corpus were added
(6 shipped solutions + 12 cheats), so that numbers before and after compare; `--all` adds the new ones.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

NEWER = {"ctypes_overwrite", "disables_aten_recorder", "fakes_launch_counter", "frame_walk_reference",
         "hardcoded_slope", "numpy_host_compute", "patches_comparison", "relu_copy", "scalar_smuggle",
         "softmax_constant", "triton_build_helper"}


def bare(problem_code: str, code: str, trials: int = 3) -> None:
    """The same correctness work in-process: what a sandbox-free checker would pay."""
    import torch
    ref_ns, cand_ns = {}, {}
    exec(problem_code, ref_ns)
    exec(compile(code, "<candidate>", "exec"), cand_ns)
    init = ref_ns["get_init_inputs"]()
    torch.manual_seed(0)
    ref = ref_ns["Model"](*init)
    torch.manual_seed(0)
    new = cand_ns["ModelNew"](*init)
    for t in range(trials):
        torch.manual_seed(t)
        xs = ref_ns["get_inputs"]()
        torch.testing.assert_close(new(*[x.clone() for x in xs]), ref(*xs), atol=1e-4, rtol=1e-4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--all", action="store_true", help="also the probes and the newer cheats")
    args = ap.parse_args()
    os.environ["TRITON_INTERPRET"] = "1"
    from nemoh.cli.main import main as cli
    from nemoh.kernels import SandboxConfig, verify_traces
    from nemoh.kernels.problems import DATA
    with tempfile.TemporaryDirectory() as tmp:
        traces = Path(tmp) / "ex.jsonl"
        cli(["kernels", "examples", "--out", str(traces), "--cheats"])
        lines = [l for l in traces.read_text().splitlines()
                 if "infinite_loop" not in l and "memory_bomb" not in l]   # their cost is the limit we set
        if not args.all:
            lines = [l for l in lines if json.loads(l)["problem"].split("~")[-1] not in NEWER
                     and not json.loads(l)["problem"].startswith("probes/")]
        n = len(lines) * args.rounds
        src = Path(tmp) / "all.jsonl"
        src.write_text("\n".join(re.sub(r'"sample": 0', f'"sample": {r}', l) for r in range(args.rounds)
                                 for l in lines) + "\n")
        print(f"{n} candidates ({len(lines)} distinct: shipped solutions + cheats, minus the timeout/memory ones)")
        print("| sandboxes at once | seconds | candidates / minute |\n|---|---|---|")
        for w in args.workers:
            out = Path(tmp) / f"v{w}.jsonl"
            t0 = time.perf_counter()
            verify_traces(src, out, SandboxConfig(timeout_s=60), workers=w, progress=False)
            dt = time.perf_counter() - t0
            print(f"| {w} | {dt:.1f} | {60 * n / dt:.1f} |", flush=True)
        sols = [f for f in sorted((DATA / "solutions").glob("*.py")) if (DATA / "problems" / f.name).exists()]
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            for f in sols:
                bare((DATA / "problems" / f.name).read_text(), f.read_text())
        dt = time.perf_counter() - t0
        per = dt / (len(sols) * args.rounds)
        print(f"\npeer (no sandbox, in-process, shipped solutions only): {per:.2f} s per candidate, "
              f"{60 / per:.1f} / minute")


if __name__ == "__main__":
    main()
