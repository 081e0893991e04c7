"""Training checkpoints: model, optimizer, scheduler, RNG states, data position and step, saved atomically.

`<run>/checkpoints/step_000050/` is written as a temp dir and renamed; the newest `keep` are kept. A run killed
during a save leaves the previous checkpoint intact (the half-written temp dir is ignored and removed later)."""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

STEP_RE = re.compile(r"^step_(\d{6,})$")


def checkpoints(run_dir: Path) -> list[Path]:
    d = run_dir / "checkpoints"
    if not d.exists():
        return []
    return sorted((p for p in d.iterdir() if STEP_RE.match(p.name)), key=lambda p: int(STEP_RE.match(p.name).group(1)))


def save_state(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, data_state: dict[str, int], keep: int) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step_*.tmp-*"):  # left by a run killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = {
        "step": step, "model": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "data": data_state, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:06d}.tmp-", dir=root))
    torch.save(state, tmp / "state.pt")
    final = root / f"step_{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    state = torch.load(path / "state.pt", weights_only=False)
    params = dict(model.named_parameters())
    missing = [n for n in state["model"] if n not in params]
    if missing:
        raise ValueError(f"{path}: checkpoint has parameters the model lacks: {missing[:5]}")
    with torch.no_grad():
        for n, t in state["model"].items():
            params[n].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state
