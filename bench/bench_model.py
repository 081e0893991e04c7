"""Forward and forward+backward throughput: nemoh vs transformers' NemotronH on the same config and weights.

    python bench/bench_model.py [--config ../shared/bench/nemotron_h_medium.json] [--batch 4 --seq 512]
                                [--dtypes float32 bfloat16] [--device cpu|cuda] [--iters 3]

Both models are built in this process from one checkpoint (written by transformers' save_pretrained), timed
alternately, and the ratio nemoh / transformers is printed, plus the share of this machine's measured matmul peak.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from nemoh import NemotronHForCausalLM
from nemoh.model.config import NemotronHConfig
from nemoh.model.flops import flops_per_token

ROOT = Path(__file__).resolve().parents[1]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, trials: int = 5) -> float:
    """Measured dense matmul FLOP/s, best of several trials: the machine's practical peak for this dtype."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n ** 3 / time_fn(lambda: a @ b, device, trials)


def time_fn(fn, device: str, iters: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT.parent / "shared" / "bench" / "nemotron_h_medium.json"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    from transformers import NemotronHConfig as RefConfig
    from transformers import NemotronHForCausalLM as RefModel

    raw = json.loads(Path(args.config).read_text())
    cfg = NemotronHConfig.from_dict(raw)
    device = args.device
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"# config {Path(args.config).name}: pattern {cfg.hybrid_override_pattern}, batch {args.batch} x {args.seq}")
    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        RefModel(RefConfig(**{k: v for k, v in raw.items() if k != "architectures"})).save_pretrained(tmp)
        for dname in args.dtypes:
            dtype = getattr(torch, dname)
            ref = RefModel.from_pretrained(tmp, dtype=dtype).to(device)
            ours = NemotronHForCausalLM.from_pretrained(tmp, dtype=dtype, device=device, mamba_dt_clamp=True)
            ours_c = NemotronHForCausalLM.from_pretrained(tmp, dtype=dtype, device=device, mamba_dt_clamp=True,
                                                          scan_impl="compile")
            ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
            peak = matmul_peak(dtype, device)
            rows = []
            for mode in ("forward", "forward+backward"):
                def step(m, logits_of):
                    if mode == "forward":
                        with torch.no_grad():
                            logits_of(m)
                    else:
                        m.zero_grad(set_to_none=True)
                        logits = logits_of(m)  # next-token cross-entropy: a real training loss
                        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                          ids[:, 1:].flatten()).backward()

                def timed(model, logits_of):
                    # the model is an argument, not a free name: the closure must not refer to `ref`/`ours`/`ours_c`,
                    # which are deleted at the end of each dtype's iteration
                    return time_fn(lambda: step(model.train(mode != "forward"), logits_of), device, args.iters)

                t_ref = timed(ref, lambda m: m(ids, use_cache=False).logits)
                t_ours = timed(ours, lambda m: m(ids).logits)
                t_comp = timed(ours_c, lambda m: m(ids).logits)
                flops = fpt * tokens * (1 if mode == "forward" else 3)
                rows.append((mode, tokens / t_ref, tokens / t_ours, tokens / t_comp, t_ref / t_ours, t_ref / t_comp,
                             flops / t_ours / peak, flops / t_comp / peak))
            print(f"\n## {dname}: matmul peak {peak / 1e9:.1f} GFLOP/s; model {fpt / 1e6:.1f} MFLOP/token forward")
            print("| pass | transformers tok/s | nemoh tok/s | nemoh scan_impl=compile tok/s | nemoh / transformers "
                  "| compiled / transformers | share of matmul peak (eager, compiled) |")
            print("|---|---|---|---|---|---|---|")
            for mode, a, b, c, r, rc, share, share_c in rows:
                print(f"| {mode} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {r:.2f}x | {rc:.2f}x "
                      f"| {share:.0%}, {share_c:.0%} |")
            del ref, ours, ours_c


if __name__ == "__main__":
    main()
