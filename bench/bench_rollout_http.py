"""Rollout throughput in-process vs over HTTP, and the weight-sync time per step (issue #14).

    python bench/bench_rollout_http.py [--prompts 16] [--samples 8] [--max-tokens 32] [--repeats 3]

One tiny checkpoint (the demo's model), one batch of the demo task's prompts, n samples each, seeded: the
in-process engine backend, then the SGLang-protocol backend against 1 and 2 `nemoh serve` processes on 127.0.0.1
(each server runs its own engine). Prints generated tokens/s per setting (median of the repeats), the ratio to
in-process, and the time of one weight sync (save to disk + every server reloads + the probe).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from net import free_port, start_server, stop_server  # noqa: E402

from nemoh.rl.backends import BackendContext, build_backend  # noqa: E402
from nemoh.rl.config import RLConfig  # noqa: E402
from nemoh.rl.trainer import RLTrainer  # noqa: E402
from nemoh.train.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp())
    cfg = load_config(ROOT / "configs" / "demo-tiny.toml",
                      ["--checkpoint.dir", str(run), "--rollout.n_samples_per_prompt", str(args.samples),
                       "--rollout.rollout_max_response_len", str(args.max_tokens)], cls=RLConfig)
    trainer = RLTrainer(cfg, show_progress=False)
    prompts = trainer.train_prompts[: args.prompts]
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}; {args.prompts} prompts x {args.samples} samples, "
          f"<= {args.max_tokens} new tokens, median of {args.repeats}")

    def measure(backend) -> float:
        rates = []
        for r in range(args.repeats):
            t = time.perf_counter()
            _, tokens = backend.generate(prompts, seed=r)
            rates.append(tokens / (time.perf_counter() - t))
        return statistics.median(rates)

    def context(**rollout) -> BackendContext:
        c = load_config(ROOT / "configs" / "demo-tiny.toml",
                        ["--checkpoint.dir", str(run), "--rollout.n_samples_per_prompt", str(args.samples),
                         "--rollout.rollout_max_response_len", str(args.max_tokens),
                         *[a for k, v in rollout.items() for a in (f"--rollout.{k}", v)]], cls=RLConfig)
        return BackendContext(c, trainer.reward, trainer.tok, trainer.chat_kwargs, trainer.model)

    engine = build_backend("engine", context())
    base_rate = measure(engine)
    rows = [("in-process engine", base_rate, None)]
    servers = [start_server(trainer.run_.base_path, port=free_port()) for _ in range(2)]
    try:
        for n in (1, 2):
            urls = json.dumps([b for _, b in servers[:n]])
            backend = build_backend("sglang", context(backend="sglang", urls=urls))
            rate = measure(backend)
            t = time.perf_counter()
            backend.sync_weights(trainer.model, 1)
            rows.append((f"{n} nemoh serve over HTTP", rate, time.perf_counter() - t))
            backend.close()
    finally:
        for proc, _ in servers:
            stop_server(proc)
    print("| rollout | tokens/s | vs in-process | weight sync (save + reload + probe) |")
    print("|---|---|---|---|")
    for name, rate, sync in rows:
        print(f"| {name} | {rate:.0f} | {rate / base_rate:.2f}x | {'-' if sync is None else f'{sync * 1000:.0f} ms'} |")


if __name__ == "__main__":
    main()
