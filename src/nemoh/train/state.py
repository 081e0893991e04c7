"""Training checkpoints through torch.distributed.checkpoint (DCP): model and optimizer state saved shard by shard,
loadable at another world size or layout (DCP reshards), plus scheduler, RNG states, data position and step.

`<run>/checkpoints/step_000050/` is written as `.step_000050.tmp` and renamed by rank 0 once every rank is done; the
newest `keep` are kept. Deleting is as atomic as writing: an old checkpoint is first renamed away
(`.step_000040.old`), then deleted, so a kill mid-delete never leaves a half-deleted `step_N` under a valid name.
A run killed during a save or a delete leaves the previous checkpoint intact; `prepare_run_dir` removes what it left
behind (and the temp directories of a killed export) when the next run starts. Single-process runs use the same
code path (DCP without a process group)."""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..checkpoint.io import remove_stale_temps
from ..parallel.state_dict import checkpoint_state, load_checkpoint_state

STEP_RE = re.compile(r"^step_(\d{6,})$")
STALE_STEP_GLOBS = (".step_*.tmp", ".step_*.old")   # a save or a delete that was killed


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpoints(run_dir: Path) -> list[Path]:
    d = run_dir / "checkpoints"
    if not d.exists():
        return []
    def step_of(p: Path) -> int:
        m = STEP_RE.match(p.name)
        assert m is not None  # only names that matched are sorted
        return int(m.group(1))
    return sorted((p for p in d.iterdir() if STEP_RE.match(p.name)), key=step_of)


def prepare_run_dir(run_dir: Path) -> None:
    """At the start of a run (rank 0): the run directory exists as a directory, and what killed saves, deletes and
    exports left in it is removed."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"checkpoint.dir: {run_dir} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"checkpoint.dir: cannot create {run_dir} ({e.strerror})") from None
    if _rank() != 0:
        return
    root = run_dir / "checkpoints"
    if root.is_dir():
        for pattern in STALE_STEP_GLOBS:
            for stale in root.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
    remove_stale_temps(run_dir)


def _remove(path: Path) -> None:
    """Rename away, then delete: a kill in between leaves `.<name>.old`, never a partial checkpoint named step_N."""
    trash = path.with_name(f".{path.name}.old")
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_state(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, data_state: dict[str, int], keep: int) -> Path:
    """Every rank calls this (the tensor writes are collective)."""
    root = run_dir / "checkpoints"
    tmp, final = root / f".step_{step:06d}.tmp", root / f"step_{step:06d}"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for pattern in STALE_STEP_GLOBS:  # left by a run killed mid-save or mid-delete
            for stale in root.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    # trainable parameters only: frozen ones (a LoRA base, the router's correction bias) come from the base model
    dcp.save(checkpoint_state(model, optimizer), checkpoint_id=str(tmp))
    if _rank() == 0:
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "data": data_state, "param_groups": hyper,
                    "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}, tmp / "trainer.pt")
        if final.exists():
            _remove(final)
        os.rename(tmp, final)
        for old in checkpoints(run_dir)[:-keep] if keep > 0 else []:
            _remove(old)
    _barrier()
    return final


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Load into the model and optimizer as they are laid out now, whatever the layout at save time."""
    state = checkpoint_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:  # DCP raises on missing/mis-shaped entries; name the checkpoint
        raise ValueError(f"{path}: checkpoint does not fit this model ({e})") from e
    load_checkpoint_state(model, optimizer, state)
    trainer = torch.load(path / "trainer.pt", weights_only=False)
    for group, hyper in zip(optimizer.param_groups, trainer.get("param_groups", [])):
        group.update(hyper)
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["rng"]["torch"])
    random.setstate(trainer["rng"]["python"])
    return trainer
