"""Model set-up shared by the SFT and RL trainers."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model import NemotronHForCausalLM
from ..model.model import DTYPES
from ..model.tiny import init_tiny
from .config import ModelConfig
from .state import prepare_run_dir


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU of this rank (LOCAL_RANK under torchrun) when CUDA is there, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def build_model(cfg: ModelConfig, run_dir: Path, seed: int) -> tuple[NemotronHForCausalLM, Path]:
    """Prepare the run directory, then load `cfg.path`, or write a tiny random checkpoint of `cfg.preset` to
    <run_dir>/base first (the CPU default).
    Returns the model in train mode and the checkpoint directory (its tokenizer is used too)."""
    prepare_run_dir(run_dir)  # a directory, cleaned of what killed runs left behind
    path = Path(cfg.path) if cfg.path else run_dir / "base"
    if not cfg.path and not (path / "config.json").exists():
        import torch.distributed as dist
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:  # one writer under torchrun, the others wait for it
            init_tiny(path, cfg.preset, seed=seed)
        if distributed:
            dist.barrier()
    model = NemotronHForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype], device=resolve_device(cfg.device),
                                                 scan_impl=cfg.scan_impl).train()
    model.set_gradient_checkpointing(cfg.gradient_checkpointing)
    return model, path
