"""The training skeleton SFT and RL share, read top to bottom (torchtitan's Trainer, nanoGPT's train.py):

    start_run        seeds, process group, model (on the CPU default a tiny random one is written first)
      (the job: LoRA, data, warm start, rollout engines -- what must see the unsharded model)
    build_training   parallelise (tp -> ep -> FSDP2 under torchrun), AdamW and its schedule
    train            resume -> for each step: job.step -> evaluation -> metrics -> checkpoint -> export

A job (`nemoh.train.sft.SFTJob`, `nemoh.rl.trainer.RLTrainer`) supplies only what differs: one step (which calls
`optimizer_step` with its micro-batch losses once per optimizer step), its evaluation, its data position.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch

from ..model import NemotronHForCausalLM
from ..parallel import init_distributed, parallelize
from ..parallel.parallelize import SINGLE, Layout, ParallelConfig
from ..parallel.state_dict import clip_grad_norm, full_state_dict
from .config import CheckpointConfig, ModelConfig, OptimConfig
from .metrics import MetricsLogger
from .optim import build_optimizer, build_scheduler
from .setup import build_model
from .state import checkpoints, load_state, save_state


@dataclass
class TrainRun:
    """The runtime objects of one training job: what a job's step works on."""
    run_dir: Path
    model: NemotronHForCausalLM
    base_path: Path                          # the checkpoint the model came from (its tokenizer is the job's)
    rank: int = 0
    world: int = 1
    layout: Layout = field(default_factory=lambda: SINGLE)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    @property
    def lead(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes."""
        return self.rank == 0


@dataclass
class LoopSchedule:
    """When the loop evaluates, logs and stops."""
    total_steps: int
    eval_every: int = 0
    log_every: int = 1
    stop_after: int = 0                      # end this run after N steps (0: run to total_steps)


class TrainJob(Protocol):
    """What a trainer plugs into `train`."""
    exports_adapter: bool                    # LoRA: write adapter/ and merge before writing final/

    def step(self, step: int) -> dict[str, Any]:
        """One iteration (its optimizer step(s) through `optimizer_step`); returns its metrics."""

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics now ({} when there is nothing to evaluate on this rank)."""

    def first_metrics(self, start: int) -> dict[str, Any]:
        """A row logged at the start step before training (RL: accuracy before; SFT: skipped rows)."""

    def final_metrics(self, last: dict[str, Any]) -> dict[str, Any]:
        """A row logged at the end (RL: accuracy after)."""

    def data_state(self) -> dict[str, int]:
        """The data position saved in a checkpoint."""

    def restore(self, trainer_state: dict[str, Any]) -> None:
        """After a checkpoint is loaded into the model and optimizer: the data position, engine weights."""


def start_run(model_cfg: ModelConfig, run_dir: Path, seed: int) -> TrainRun:
    """Seeds, the torchrun process group (if launched by torchrun), the model in train mode."""
    torch.manual_seed(seed)
    random.seed(seed)
    rank, world = init_distributed()
    model, base_path = build_model(model_cfg, run_dir, seed)
    return TrainRun(run_dir, model, base_path, rank, world)


def build_training(run: TrainRun, parallel: ParallelConfig, optim: OptimConfig, total_steps: int,
                   params: list[torch.nn.Parameter] | None = None, layout: Layout | None = None) -> None:
    """Parallelise the model under torchrun (into `layout` when the caller built it first), then AdamW over `params`
    (default: every trainable parameter) and its schedule over `total_steps` optimizer steps."""
    if run.world > 1:
        run.layout = parallelize(run.model, parallel, run.world, layout)
        params = None  # the sharded parameters replace the ones collected before
    if params is None:
        params = [p for p in run.model.parameters() if p.requires_grad]
    run.optimizer = build_optimizer(params, optim)
    run.scheduler = build_scheduler(run.optimizer, total_steps, optim)


def optimizer_step(run: TrainRun, micro_losses: Iterable[torch.Tensor], grad_clip: float) -> dict[str, float]:
    """Backward through each micro-batch loss (gradients accumulate; each loss is already normalised over the whole
    step), clip the global gradient norm, AdamW, advance the schedule."""
    assert run.optimizer is not None and run.scheduler is not None, "build_training first"
    for loss in micro_losses:
        loss.backward()                      # under torchrun, gradients are summed over data ranks (parallelize)
    grad_norm = clip_grad_norm(run.model, grad_clip)
    lr = cast(float, run.scheduler.get_last_lr()[0])  # a float: the optimizer's lr is a float
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": grad_norm, "lr": lr}


def resume(run: TrainRun, job: TrainJob, ckpt: CheckpointConfig) -> int:
    """The step to start from: that of the newest checkpoint when resuming, else 0."""
    if not (ckpt.resume and checkpoints(run.run_dir)):
        return 0
    assert run.optimizer is not None and run.scheduler is not None, "build_training first"
    state = load_state(checkpoints(run.run_dir)[-1], run.model, run.optimizer, run.scheduler)
    job.restore(state)
    return int(state["step"])


def train(run: TrainRun, job: TrainJob, schedule: LoopSchedule, ckpt: CheckpointConfig,
          show_progress: bool = True) -> dict[str, Any]:
    """Resume, then the steps with evaluation, metrics and checkpoints, then the export. Returns the last step's
    metrics with the final row's; `{"already_finished": True, "step": N}` when a resumed run had nothing left."""
    start = resume(run, job, ckpt)
    if start >= schedule.total_steps:        # resuming a finished run: nothing to train, nothing to overwrite
        return {"already_finished": True, "step": start}
    end = min(schedule.total_steps, start + schedule.stop_after) if schedule.stop_after else schedule.total_steps
    log = MetricsLogger(run.run_dir, schedule.total_steps, start, show_progress and run.lead, enabled=run.lead)
    first = job.first_metrics(start)
    if first:
        log.log(start, first)
    last: dict[str, Any] = {}
    for step in range(start, end):
        last = job.step(step)
        evaluated: dict[str, Any] = {}
        if schedule.eval_every and (step + 1) % schedule.eval_every == 0:
            evaluated = job.evaluate()
            last.update(evaluated)
        if (step + 1) % schedule.log_every == 0 or evaluated:
            log.log(step + 1, last)
        log.advance()
        if ckpt.every and (step + 1) % ckpt.every == 0:
            assert run.optimizer is not None, "build_training first"
            save_state(run.run_dir, step + 1, run.model, run.optimizer, run.scheduler, job.data_state(), ckpt.keep)
    final = job.final_metrics(last) if end == schedule.total_steps else {}
    if final:
        log.log(end, final)
    log.close()
    if end == schedule.total_steps:
        export(run, job.exports_adapter)
    return {**last, **final}


def export(run: TrainRun, adapter: bool = False) -> None:
    """<run>/final: a servable Hub-layout checkpoint (gathered from the shards under torchrun; rank 0 writes,
    atomically). With LoRA, <run>/adapter holds the adapter alone and final/ the merged weights."""
    if run.world > 1:
        import torch.distributed as dist
        state = full_state_dict(run.model)   # every rank takes part in the gather
        if run.lead:
            with torch.device("meta"):
                plain = NemotronHForCausalLM(run.model.config)
            plain.load_state_dict(state, assign=True)
            plain.save_pretrained(run.run_dir / "final", tokenizer_dir=run.base_path)
        dist.barrier()
        return
    if adapter:
        from ..lora import merge_lora, save_adapter
        save_adapter(run.model, run.run_dir / "adapter", base_model=str(run.base_path))
        merge_lora(run.model)
    run.model.save_pretrained(run.run_dir / "final", tokenizer_dir=run.base_path)


__all__ = ["LoopSchedule", "TrainJob", "TrainRun", "build_training", "export", "optimizer_step", "resume",
           "start_run", "train"]
