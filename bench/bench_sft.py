"""SFT training throughput: nemoh vs transformers' NemotronH, same weights, same data, same AdamW, CPU float32.

    python bench/bench_sft.py [--config ../shared/bench/nemotron_h_medium.json] [--rows 4 --seq 512 --steps 4]

Data: the built-in chat dataset tokenised with the built-in tokenizer and packed into rows of `--seq` tokens
(ids fit any vocab >= 272). Both models get the same rows and labels; transformers sees each packed row as one
sequence (it has no document reset), nemoh gets the document index too. Prints tokens/s, the ratio and MFU
against the measured matmul peak.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nemoh import NemotronHForCausalLM
from nemoh.data import ErrorLog, collate, load_chat_examples, pack, read_rows
from nemoh.model.config import NemotronHConfig
from nemoh.model.flops import flops_per_token
from nemoh.model.tiny import init_tiny
from nemoh.tokenizer import Tokenizer
from nemoh.train.config import ASSETS

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT.parent / "shared" / "bench" / "nemotron_h_medium.json"))
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    from transformers import NemotronHConfig as RefConfig
    from transformers import NemotronHForCausalLM as RefModel
    raw = json.loads(Path(args.config).read_text())
    cfg = NemotronHConfig.from_dict(raw)
    with tempfile.TemporaryDirectory() as tmp:
        tok = Tokenizer.from_pretrained(init_tiny(Path(tmp) / "tok"))
        errors = ErrorLog("skip")
        examples = load_chat_examples(list(read_rows(ASSETS / "tiny_chat.jsonl", errors)), tok, errors)
        rows = pack(examples * 8, args.seq)
        batches = [collate(rows[i:i + args.rows], args.seq) for i in range(0, len(rows) - args.rows + 1, args.rows)]
        torch.manual_seed(0)
        RefModel(RefConfig(**{k: v for k, v in raw.items() if k != "architectures"})).save_pretrained(tmp + "/m")
        ref = RefModel.from_pretrained(tmp + "/m", dtype=torch.float32).train()
        ours = NemotronHForCausalLM.from_pretrained(tmp + "/m", dtype=torch.float32, mamba_dt_clamp=True).train()
        ours_c = NemotronHForCausalLM.from_pretrained(tmp + "/m", dtype=torch.float32, mamba_dt_clamp=True,
                                                      scan_impl="compile").train()

    def run(model, packed: bool, is_ref: bool) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=False)
        def step(b):
            kw = {"use_cache": False} if is_ref else ({"seq_idx": b.seq_idx} if packed else {})
            logits = model(b.input_ids, **kw).logits
            F.cross_entropy(logits.flatten(0, 1), b.labels.flatten(), ignore_index=-100).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        step(batches[0])  # warm-up
        t = time.perf_counter()
        for i in range(args.steps):
            step(batches[(i + 1) % len(batches)])
        return args.rows * args.seq * args.steps / (time.perf_counter() - t)

    a = torch.randn(2048, 2048)
    a @ a
    t = min((lambda s: (a @ a, time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(5))
    peak = 2 * 2048 ** 3 / t
    fpt = 3 * flops_per_token(cfg, args.seq)
    r = run(ref, False, True)
    o = run(ours, True, False)
    c = run(ours_c, True, False)
    print(f"# CPU float32, {torch.get_num_threads()} threads, rows {args.rows} x {args.seq}, AdamW, matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s")
    print("| trainer | tokens/s | vs transformers | MFU |\n|---|---|---|---|")
    print(f"| transformers NemotronH | {r:,.0f} | 1.00x | {fpt * r / peak:.0%} |")
    print(f"| nemoh (packed, document reset) | {o:,.0f} | {o / r:.2f}x | {fpt * o / peak:.0%} |")
    print(f"| nemoh scan_impl=compile | {c:,.0f} | {c / r:.2f}x | {fpt * c / peak:.0%} |")


if __name__ == "__main__":
    main()
