"""Per-token time of stop-string detokenisation over a long output: incremental (the engine's) vs a full re-decode
after every token (the engine before), and the engine's own per-token time along a 4k-token generation with a stop
string set (it must stay flat).

    python bench/bench_detok.py [--tokens 4096] [--window 512]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from nemoh import LLM, SamplingParams
from nemoh.cli.model_cmds import init_tiny
from nemoh.engine.detokenizer import IncrementalDetokenizer, find_stop, special_skip_ids
from nemoh.tokenizer import Tokenizer

STOPS = ["never appears \u2603"]


def per_window(times: list[float], window: int) -> list[float]:
    return [sum(times[i:i + window]) / len(times[i:i + window]) * 1e6 for i in range(0, len(times), window)]


def full_redecode(tok: Tokenizer, ids: list[int]) -> list[float]:
    times, text = [], ""
    for n in range(1, len(ids) + 1):
        t = time.perf_counter()
        full = tok.decode(ids[:n])
        for s in STOPS:
            full.find(s, max(0, len(text) - len(s)))
        text = full
        times.append(time.perf_counter() - t)
    return times


def incremental(tok: Tokenizer, ids: list[int]) -> list[float]:
    times, d = [], IncrementalDetokenizer(tok, special_skip_ids(tok))
    for token in ids:
        t = time.perf_counter()
        before = len(d.text)
        d.add(token)
        find_stop(d.text, len(d.text) - before, STOPS)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    print(f"# {platform.node()}, torch {torch.__version__}, threads {torch.get_num_threads()}, tiny model, "
          f"{args.tokens} output tokens, stop={STOPS}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny"
        init_tiny(path, seed=0)
        llm = LLM(path, max_num_seqs=1, max_model_len=args.tokens + 64)
    tok = llm.tokenizer
    step_times: list[float] = []
    llm.add_request("Once upon a time", SamplingParams(temperature=1.0, seed=0, max_tokens=args.tokens,
                                                       ignore_eos=True, stop=STOPS))
    while llm.scheduler.has_work():
        t = time.perf_counter()
        llm.step()
        step_times.append(time.perf_counter() - t)
    ids = next(iter(llm.requests.values()))[1][0].output_token_ids
    w = args.window
    rows = [("engine step, stop string set", per_window(step_times, w)),
            ("detokenise + stop search: full re-decode (before)", per_window(full_redecode(tok, ids), w)),
            ("detokenise + stop search: incremental (now)", per_window(incremental(tok, ids), w))]
    heads = [f"tokens {i}-{min(i + w, len(ids))}" for i in range(0, len(ids), w)]
    print("| µs per token | " + " | ".join(heads) + " | last / first |")
    print("|---" * (len(heads) + 2) + "|")
    for name, vals in rows:
        print(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in vals) + f" | {vals[-1] / vals[0]:.2f}x |")


if __name__ == "__main__":
    main()
