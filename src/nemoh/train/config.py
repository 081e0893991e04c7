"""Training config sections shared by SFT and RL (model, optim, checkpoint; `[lora]` is `LoRAConfig`, `[parallel]`
is `ParallelConfig`) and the SFT job config. Read from TOML and `--section.key value` by `nemoh.config_loader`."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_loader import load_config as _load
from ..lora import LoRAConfig
from ..parallel.parallelize import ParallelConfig

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@dataclass
class ModelConfig:
    path: str = ""                   # Hub-layout checkpoint; empty = write a tiny random one (preset below)
    preset: str = "tiny"
    dtype: str = "float32"           # float32 | bfloat16
    gradient_checkpointing: bool = False
    scan_impl: str = "torch"
    device: str = "auto"             # auto (this rank's GPU if there is one, else cpu) | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype: expected float32 or bfloat16, got {self.dtype!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"model.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class DataConfig:
    train: str = str(ASSETS / "tiny_chat.jsonl")
    eval: str = str(ASSETS / "tiny_chat_eval.jsonl")
    messages_key: str = "messages"
    seq_len: int = 512               # token budget of one packed row
    rows_per_step: int = 2           # packed rows per micro-batch
    on_error: str = "warn"           # warn (skip, stop above max_skip_share) | skip | raise
    max_skip_share: float = 0.1
    train_on_thinking: bool = True
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {truncate_history_thinking = false}

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.rows_per_step <= 0:
            raise ValueError("data.seq_len and data.rows_per_step: must be positive")
        if self.on_error not in ("warn", "skip", "raise"):
            raise ValueError(f"data.on_error: expected warn, skip or raise, got {self.on_error!r}")
        if not 0 <= self.max_skip_share <= 1:
            raise ValueError(f"data.max_skip_share: expected a share in [0, 1], got {self.max_skip_share}")
        if isinstance(self.chat_template_kwargs, str):  # from --data.chat_template_kwargs '{"k": false}'
            import json
            try:
                self.chat_template_kwargs = json.loads(self.chat_template_kwargs)
            except json.JSONDecodeError as e:
                raise ValueError(f"data.chat_template_kwargs: not a JSON object ({e.msg})") from None
        if not isinstance(self.chat_template_kwargs, dict):
            raise ValueError("data.chat_template_kwargs: expected a table of template arguments")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    warmup_steps: int = 5
    schedule: str = "cosine"         # cosine | constant
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule: expected cosine or constant, got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr: must be positive, got {self.lr}")


@dataclass
class TrainConfig:
    steps: int = 60
    grad_accum: int = 1
    seed: int = 0
    eval_every: int = 20
    log_every: int = 1
    stop_after: int = 0              # end this run after N steps (0: run to `steps`); resume continues the schedule

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.grad_accum <= 0:
            raise ValueError("train.steps and train.grad_accum: must be positive")


@dataclass
class LoRASection(LoRAConfig):
    """`[lora]`: the adapter's own config (r, alpha, targets) plus whether to train one."""
    enabled: bool = False
    init_from: str = ""              # an adapter dir (PEFT's format or nemoh's) to start from; it sets r/alpha/targets

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_from and not self.enabled:
            raise ValueError("lora.init_from: set lora.enabled = true as well")


@dataclass
class CheckpointConfig:
    dir: str = "runs/sft"            # run directory: metrics, TensorBoard, checkpoints, final model
    every: int = 0                   # save every N steps (0: only at the end)
    keep: int = 2
    resume: bool = False


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRASection = field(default_factory=LoRASection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] | None = None, cls: type = SFTConfig) -> Any:
    """TOML file (optional) + ["--section.key", "value", ...] overrides -> a validated `cls` (SFTConfig by default;
    `nemoh.rl.config.RLConfig` for RL). The loader itself is `nemoh.config_loader.load_config`."""
    return _load(cls, path, overrides)
