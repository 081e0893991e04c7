"""Peak memory (RSS) of prefilling one long prompt, in chunks vs one shot, each in a fresh process.

    python bench/bench_prefill_memory.py [--config ../shared/bench/nemotron_h_medium.json] [--prompt-len 32768]
                                         [--chunks 2048 none] [--limit-gb 12]

Each run builds the model and the engine (cache for the whole prompt), notes the RSS, prefills the prompt and samples
one token, and reports the peak RSS above that baseline: the prefill's working memory. A run is capped at
`--limit-gb` of address space so that a one-shot prefill that would exhaust a shared machine fails instead.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(config: str, prompt_len: int, chunk: int | None) -> None:
    import torch

    from nemoh import LLM, NemotronHForCausalLM, SamplingParams
    from nemoh.model import NemotronHConfig
    raw = {k: v for k, v in json.loads(Path(config).read_text()).items() if k != "architectures"}
    model = NemotronHForCausalLM.from_config(NemotronHConfig.from_dict(raw), seed=0)
    llm = LLM(model, max_num_seqs=1, max_model_len=prompt_len + 8, max_prefill_tokens=chunk)
    ids = torch.randint(3, raw["vocab_size"], (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    base = rss_mb()
    t = time.perf_counter()
    out = llm.generate(ids, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    dt = time.perf_counter() - t
    print(json.dumps({"base_mb": base, "peak_mb": peak_mb(), "seconds": dt, "token": out[0].outputs[0].token_ids[0]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT.parent / "shared" / "bench" / "nemotron_h_medium.json"))
    ap.add_argument("--prompt-len", type=int, default=32768)
    ap.add_argument("--chunks", nargs="+", default=["2048", "none"])
    ap.add_argument("--limit-gb", type=float, default=12.0)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child is not None:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        child(args.config, args.prompt_len, None if args.child == "none" else int(args.child))
        return
    print(f"# {platform.node()}, {args.prompt_len}-token prompt, {Path(args.config).name}, float32, CPU, "
          f"address space capped at {args.limit_gb:g} GB per run")
    print("| max_prefill_tokens | peak RSS above baseline | peak RSS | prefill + 1 token | first token |\n"
          "|---|---|---|---|---|")
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--config", args.config, "--prompt-len", str(args.prompt_len),
               "--limit-gb", str(args.limit_gb), "--child", chunk]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {chunk} | failed under the {args.limit_gb:g} GB cap: {last[:80]} | | | |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {chunk} | {r['peak_mb'] - r['base_mb']:,.0f} MB | {r['peak_mb']:,.0f} MB | {r['seconds']:.1f} s | "
              f"{r['token']} |")


if __name__ == "__main__":
    main()
