"""Scaling on this machine: SFT tokens/s of the tiny model for torchrun layouts (FSDP2, tensor and expert
parallel, gloo on CPU), the same global batch each time. A layout is PROCS[:TP[:EP]] (dp_shard = the rest).

    python bench/bench_scaling.py [--layouts 1 2 4 2:2 2:1:2 4:2:2] [--steps 6] [--global-rows 4] [--seq 512]
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def run(nproc: int, tp: int, ep: int, steps: int, rows: int, seq: int, out: Path) -> float:
    data_ranks = nproc // tp                     # tp ranks share their rows
    args = ["-m", "nemoh.cli.main", "sft", "--checkpoint.dir", str(out), "--train.steps", str(steps), "--quiet",
            "--data.rows_per_step", str(rows // data_ranks), "--train.eval_every", "0", "--data.seq_len", str(seq),
            "--parallel.tp", str(tp), "--parallel.ep", str(ep)]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(port), *args]
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    rows_ = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    tps = [r["tokens_per_s"] for r in rows_ if "tokens_per_s" in r][1:]  # skip the first (warm-up) step
    return sum(tps) / len(tps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", nargs="+", default=["1", "2", "4", "2:2", "2:1:2", "4:2:2"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--global-rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args()
    print("| processes | tp | ep | tokens/s | vs 1 process |\n|---|---|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.layouts:
            n, tp, ep = ([int(x) for x in spec.split(":")] + [1, 1])[:3]
            tps = run(n, tp, ep, args.steps, args.global_rows, args.seq, Path(tmp) / spec.replace(":", "_"))
            base = base or tps
            print(f"| {n} | {tp} | {ep} | {tps:,.0f} | {tps / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
