"""Supervised fine-tuning: a loop you can read top to bottom.

build model (+ LoRA) -> load and pack data -> (resume) -> for each step: grad_accum micro-batches of packed rows,
token-mean cross-entropy over the whole step, clip, AdamW, schedule -> log / eval / checkpoint -> export.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import ErrorLog, collate, load_chat_examples, pack, read_rows
from ..data.packing import PackedBatch, trained_tokens
from ..lora import apply_lora, load_adapter, lora_parameters, merge_lora, save_adapter
from ..model import NemotronHForCausalLM
from ..model.flops import flops_per_token
from ..model.model import DTYPES
from ..tokenizer import Tokenizer
from .config import SFTConfig
from .metrics import MetricsLogger
from .optim import build_optimizer, build_scheduler
from .setup import build_model
from ..parallel import init_distributed, parallelize
from ..parallel.parallelize import SINGLE, Layout
from ..parallel.state_dict import clip_grad_norm, full_state_dict
from .state import checkpoints, load_state, save_state



@dataclass
class PackedLoader:
    """Packed rows in a seeded order per epoch; (epoch, index) is the whole state, so resume is exact."""
    rows: list
    rows_per_step: int
    seq_len: int
    seed: int
    epoch: int = 0
    index: int = 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def next(self, rank: int = 0, world: int = 1) -> tuple[PackedBatch, int]:
        """The next rows_per_step x world rows; this rank's share and the trained-token count of all of them."""
        order, picked = self._order(), []
        while len(picked) < self.rows_per_step * world:
            if self.index >= len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            picked.append(self.rows[order[self.index]])
            self.index += 1
        return collate(picked[rank::world], self.seq_len), trained_tokens(picked)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


def token_loss(model: NemotronHForCausalLM, batch: PackedBatch, denominator: int) -> torch.Tensor:
    """Sum of token cross-entropies over trained tokens, divided by the step's trained-token count."""
    batch = batch.to(model.device)
    logits = model(batch.input_ids, seq_idx=batch.seq_idx).logits
    return F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100, reduction="sum") / denominator


def load_packed(path: str, tok: Tokenizer, cfg: SFTConfig, errors: ErrorLog) -> list:
    examples = load_chat_examples(list(read_rows(path, errors)), tok, errors, cfg.data.messages_key,
                                  cfg.data.train_on_thinking, max_len=cfg.data.seq_len,
                                  chat_template_kwargs=cfg.data.chat_template_kwargs, source=path)
    if not examples:
        raise ValueError(f"{path}: no usable examples ({len(errors.skipped)} skipped)")
    return pack(examples, cfg.data.seq_len)


def measured_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 1024) -> float:
    """Matmul FLOP/s measured here, on the training device and dtype: MFU's denominator."""
    if device.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    best = min(_timed(lambda: a @ a, device) for _ in range(3))
    return 2 * n ** 3 / best


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def run_sft(cfg: SFTConfig, show_progress: bool = True) -> dict[str, Any]:
    run_dir = Path(cfg.checkpoint.dir)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)

    rank, world = init_distributed()
    model, path = build_model(cfg.model, run_dir, cfg.train.seed)
    if cfg.lora.enabled and cfg.lora.init_from:
        load_adapter(model, cfg.lora.init_from)
        params = lora_parameters(model)
    elif cfg.lora.enabled:
        apply_lora(model, cfg.lora)
        params = lora_parameters(model)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    tok = Tokenizer.from_pretrained(path)

    # data
    errors = ErrorLog(cfg.data.on_error, cfg.data.max_skip_share, echo=rank == 0)
    train_rows = load_packed(cfg.data.train, tok, cfg, errors)
    eval_rows = load_packed(cfg.data.eval, tok, cfg, errors) if cfg.data.eval else []
    loader = PackedLoader(train_rows, cfg.data.rows_per_step, cfg.data.seq_len, cfg.train.seed)

    layout: Layout = SINGLE
    if world > 1:
        if cfg.lora.enabled:
            raise ValueError("lora.enabled: LoRA training is single-process for now (run without torchrun, or set lora.enabled = false)")
        layout = parallelize(model, cfg.parallel, world)
        params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg.optim)
    sched = build_scheduler(opt, cfg.train.steps, cfg.optim)
    start = 0
    if cfg.checkpoint.resume and checkpoints(run_dir):
        state = load_state(checkpoints(run_dir)[-1], model, opt, sched)
        start, loader.epoch, loader.index = state["step"], state["data"]["epoch"], state["data"]["index"]

    flops_tok = 3 * flops_per_token(model.config, cfg.data.seq_len)
    peak = measured_peak_flops(model.device, DTYPES[cfg.model.dtype])
    log = MetricsLogger(run_dir, cfg.train.steps, start, show_progress and rank == 0, enabled=rank == 0)
    if errors.skipped and start == 0:
        log.log(0, {"skipped_rows": len(errors.skipped), "first_skipped": errors.skipped[0]})
    last: dict[str, Any] = {}
    end = min(cfg.train.steps, start + cfg.train.stop_after) if cfg.train.stop_after else cfg.train.steps
    for step in range(start, end):
        t0 = time.perf_counter()
        # tp ranks of one data rank read the same rows
        drawn = [loader.next(layout.data_rank, layout.data_world) for _ in range(cfg.train.grad_accum)]
        batches = [b for b, _ in drawn]
        denom = max(1, sum(n for _, n in drawn))  # trained tokens of the whole step, all ranks: a global token mean
        loss = 0.0
        for b in batches:
            micro = token_loss(model, b, denom)
            micro.backward()                      # gradients are summed over data ranks (parallelize)
            loss += float(micro.detach())
        loss = layout.all_reduce_data(loss)
        grad_norm = clip_grad_norm(model, cfg.optim.grad_clip)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tokens = sum(b.input_ids.numel() for b in batches) * layout.data_world
        last = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens_per_s": tokens / dt,
                "mfu": flops_tok * tokens / dt / peak, "trained_tokens": denom}
        if eval_rows and cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0:
            last["eval_loss"] = evaluate(model, eval_rows, cfg)
        if (step + 1) % cfg.train.log_every == 0 or "eval_loss" in last:
            log.log(step + 1, last)
        log.advance()
        if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0:
            save_state(run_dir, step + 1, model, opt, sched, loader.state(), cfg.checkpoint.keep)
    log.close()
    if end == cfg.train.steps:
        if world > 1:
            export_sharded(model, run_dir, path, rank)
        else:
            export(model, run_dir, path, cfg)
    return last


def export_sharded(model: NemotronHForCausalLM, run_dir: Path, base: Path, rank: int) -> None:
    """Gather the full weights (every rank takes part), rank 0 writes the Hub layout atomically."""
    import torch.distributed as dist
    state = full_state_dict(model)
    if rank == 0:
        with torch.device("meta"):
            plain = NemotronHForCausalLM(model.config)
        plain.load_state_dict(state, assign=True)
        plain.save_pretrained(run_dir / "final", tokenizer_dir=base)
    dist.barrier()


@torch.no_grad()
def evaluate(model: NemotronHForCausalLM, rows: list, cfg: SFTConfig) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), cfg.data.rows_per_step):
        b = collate(rows[i:i + cfg.data.rows_per_step], cfg.data.seq_len)
        total += float(token_loss(model, b, 1))
        count += b.num_tokens
    model.train()
    return total / max(1, count)


def export(model: NemotronHForCausalLM, run_dir: Path, base: Path, cfg: SFTConfig) -> None:
    """final/ is a servable Hub-layout checkpoint; with LoRA, adapter/ holds the adapter alone."""
    if cfg.lora.enabled:
        save_adapter(model, run_dir / "adapter", base_model=str(base))
        merge_lora(model)
    model.save_pretrained(run_dir / "final", tokenizer_dir=base)
