"""Decode throughput and time to first token: nemoh.LLM vs transformers' NemotronHForCausalLM.generate (its cache).

    python bench/bench_engine.py [--config ../shared/bench/nemotron_h_medium.json] [--batches 1 16]
                                 [--new-tokens 128] [--prompt-len 32] [--ttft-len 4096] [--device cpu]
                                 [--compile] [--profile]

Same weights (one checkpoint written by transformers), float32, greedy, fixed output length (EOS ignored).
`--compile` adds nemoh with the compiled decode step (its start-up compile time is printed, not counted);
`--profile` prints each engine's per-step split (scheduling, model, sampling, detokenisation, other).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from nemoh import LLM, NemotronHForCausalLM, SamplingParams
from nemoh.engine.profiler import PHASES, StepProfile

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT.parent / "shared" / "bench" / "nemotron_h_medium.json"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--ttft-len", type=int, default=4096)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    from transformers import NemotronHConfig as RefConfig
    from transformers import NemotronHForCausalLM as RefModel
    raw = json.loads(Path(args.config).read_text())
    dtype, device, new = getattr(torch, args.dtype), args.device, args.new_tokens
    print(f"# {platform.node()} {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}, {args.dtype}, {new} new tokens, prompt {args.prompt_len} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        RefModel(RefConfig(**{k: v for k, v in raw.items() if k != "architectures"})).save_pretrained(tmp)
        ref = RefModel.from_pretrained(tmp, dtype=dtype).to(device).eval()
        model = NemotronHForCausalLM.from_pretrained(tmp, dtype=dtype, device=device)
    V = raw["vocab_size"]
    kinds = ["eager"] + (["compiled"] if args.compile else [])
    print("| measure | transformers | " + " | ".join(f"nemoh {k}" for k in kinds) + " | "
          + " | ".join(f"{k} / transformers" for k in kinds) + " |\n" + "|---" * (2 + 2 * len(kinds)) + "|")
    profiles = []
    for b in args.batches:
        ids = torch.randint(3, V, (b, args.prompt_len), device=device)
        sp = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
        run_ref = lambda: ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                       min_new_tokens=new, do_sample=False, pad_token_id=0)
        run_ref()  # warm-up
        rates = [b * new / timed(run_ref, device)]
        for kind in kinds:
            t = time.perf_counter()
            llm = LLM(model, max_num_seqs=b, max_model_len=args.prompt_len + new + 8, compile=kind == "compiled")
            if kind == "compiled":
                print(f"# compiled decode, batch {b}: start-up compile {time.perf_counter() - t:.0f} s "
                      f"(buckets {llm.runner.compiled.buckets})", flush=True)
            run_ours = lambda: llm.generate(ids.tolist(), sp)
            run_ours()  # warm-up
            rates.append(b * new / timed(run_ours, device))
            if args.profile:
                llm.profile = StepProfile(device)
                t = time.perf_counter()
                run_ours()
                profiles.append((f"{kind}, batch {b}", llm.profile, time.perf_counter() - t))
                split = llm.profile.split()
                print(f"# profile {kind}, batch {b}, ms per step: "
                      + ", ".join(f"{p} {split[p]:.2f}" for p in (*PHASES, "other")), flush=True)
        print(f"| decode tok/s, batch {b} | " + " | ".join(f"{r:,.1f}" for r in rates) + " | "
              + " | ".join(f"{r / rates[0]:.2f}x" for r in rates[1:]) + " |", flush=True)
    if profiles:
        print("\n| ms per step | " + " | ".join(PHASES) + " | other | steps |\n" + "|---" * (len(PHASES) + 3) + "|")
        for name, prof, _ in profiles:
            split = prof.split()
            print(f"| {name} | " + " | ".join(f"{split[p]:.2f}" for p in (*PHASES, "other")) + f" | {prof.steps} |")
    llm = LLM(model, max_num_seqs=1, max_model_len=args.ttft_len + 8)
    ids = torch.randint(3, V, (1, args.ttft_len), device=device)
    sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    run_ref = lambda: ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                                   pad_token_id=0)
    run_ours = lambda: llm.generate(ids[0].tolist(), sp)
    run_ours(), run_ref()
    t_ref = min(timed(run_ref, device) for _ in range(3))
    t_ours = min(timed(run_ours, device) for _ in range(3))
    print(f"| time to first token, {args.ttft_len}-token prompt | {t_ref * 1e3:.0f} ms | {t_ours * 1e3:.0f} ms | "
          f"{t_ref / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
