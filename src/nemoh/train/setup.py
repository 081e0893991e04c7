"""Model set-up shared by the SFT and RL trainers."""
from __future__ import annotations

from pathlib import Path

from ..model import NemotronHForCausalLM
from ..model.model import DTYPES
from .config import ModelConfig


def build_model(cfg: ModelConfig, run_dir: Path, seed: int) -> tuple[NemotronHForCausalLM, Path]:
    """Load `cfg.path`, or write a tiny random checkpoint of `cfg.preset` to <run_dir>/base first (the CPU default).
    Returns the model in train mode and the checkpoint directory (its tokenizer is used too)."""
    path = Path(cfg.path) if cfg.path else run_dir / "base"
    if not cfg.path and not (path / "config.json").exists():
        from ..cli.model_cmds import init_tiny
        import torch.distributed as dist
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:  # one writer under torchrun, the others wait for it
            init_tiny(path, cfg.preset, seed=seed)
        if distributed:
            dist.barrier()
    model = NemotronHForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype], scan_impl=cfg.scan_impl).train()
    model.set_gradient_checkpointing(cfg.gradient_checkpointing)
    return model, path
