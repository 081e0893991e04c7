"""Supervised fine-tuning: a loop you can read top to bottom.

build model (+ LoRA) -> load and pack data -> the shared loop (nemoh/train/loop.py: resume, steps, metrics,
checkpoints, export), whose step here is: grad_accum micro-batches of packed rows, token-mean cross-entropy over
the whole step, clip, AdamW, schedule.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import ErrorLog, Example, collate, load_chat_examples, pack, read_rows
from ..data.packing import PackedBatch, trained_tokens
from ..lora import apply_lora, load_adapter, lora_parameters
from ..model import NemotronHForCausalLM
from ..model.flops import flops_per_token
from ..model.model import DTYPES
from ..tokenizer import Tokenizer
from .config import SFTConfig
from .loop import LoopSchedule, TrainRun, build_training, optimizer_step, start_run, train


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
        order = self._order()
        picked: list[list[Example]] = []
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
    loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100, reduction="sum")
    return loss / denominator


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


class SFTJob:
    """The SFT step plugged into the shared loop (`nemoh.train.loop`): `grad_accum` micro-batches of packed rows,
    a token-mean cross-entropy over the whole step (all micro-batches, all data ranks), one optimizer step."""

    def __init__(self, cfg: SFTConfig, run: TrainRun):
        self.cfg, self.run = cfg, run
        self.exports_adapter = cfg.lora.enabled
        tok = Tokenizer.from_pretrained(run.base_path)
        self.errors = ErrorLog(cfg.data.on_error, cfg.data.max_skip_share, echo=run.rank == 0)
        train_rows = load_packed(cfg.data.train, tok, cfg, self.errors)
        self.eval_rows = load_packed(cfg.data.eval, tok, cfg, self.errors) if cfg.data.eval else []
        self.loader = PackedLoader(train_rows, cfg.data.rows_per_step, cfg.data.seq_len, cfg.train.seed)
        self.flops_tok = 3 * flops_per_token(run.model.config, cfg.data.seq_len)
        self.peak = 0.0                      # measured at the first step, on the training device

    def step(self, step: int) -> dict[str, Any]:
        run, cfg = self.run, self.cfg
        if not self.peak:
            self.peak = measured_peak_flops(run.model.device, DTYPES[cfg.model.dtype])
        t0 = time.perf_counter()
        # tp ranks of one data rank read the same rows
        drawn = [self.loader.next(run.layout.data_rank, run.layout.data_world) for _ in range(cfg.train.grad_accum)]
        batches = [b for b, _ in drawn]
        denom = max(1, sum(n for _, n in drawn))  # trained tokens of the whole step, all ranks: a global token mean
        losses: list[float] = []

        def micro_losses() -> Iterator[torch.Tensor]:
            for b in batches:
                micro = token_loss(run.model, b, denom)
                losses.append(float(micro.detach()))
                yield micro

        opt = optimizer_step(run, micro_losses(), cfg.optim.grad_clip)
        dt = time.perf_counter() - t0
        tokens = sum(b.input_ids.numel() for b in batches) * run.layout.data_world
        return {"loss": run.layout.all_reduce_data(sum(losses)), **opt, "tokens_per_s": tokens / dt,
                "mfu": self.flops_tok * tokens / dt / self.peak, "trained_tokens": denom}

    def evaluate(self) -> dict[str, Any]:
        return {"eval_loss": evaluate(self.run.model, self.eval_rows, self.cfg)} if self.eval_rows else {}

    def first_metrics(self, start: int) -> dict[str, Any]:
        if self.errors.skipped and start == 0:
            return {"skipped_rows": len(self.errors.skipped), "first_skipped": self.errors.skipped[0]}
        return {}

    def final_metrics(self, last: dict[str, Any]) -> dict[str, Any]:
        return {}

    def data_state(self) -> dict[str, int]:
        return self.loader.state()

    def restore(self, trainer_state: dict[str, Any]) -> None:
        self.loader.epoch, self.loader.index = trainer_state["data"]["epoch"], trainer_state["data"]["index"]


def run_sft(cfg: SFTConfig, show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune `cfg.model` on `cfg.data`; returns the last step's metrics (`already_finished` when resuming a
    run that had ended)."""
    run = start_run(cfg.model, Path(cfg.checkpoint.dir), cfg.train.seed)
    params = None
    if cfg.lora.enabled:
        if run.world > 1:
            raise ValueError("lora.enabled: LoRA training is single-process for now (run without torchrun, or set "
                             "lora.enabled = false)")
        if cfg.lora.init_from:
            load_adapter(run.model, cfg.lora.init_from)
        else:
            apply_lora(run.model, cfg.lora)
        params = lora_parameters(run.model)
    job = SFTJob(cfg, run)
    build_training(run, cfg.parallel, cfg.optim, cfg.train.steps, params)
    schedule = LoopSchedule(cfg.train.steps, cfg.train.eval_every, cfg.train.log_every, cfg.train.stop_after)
    return train(run, job, schedule, cfg.checkpoint, show_progress)


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
