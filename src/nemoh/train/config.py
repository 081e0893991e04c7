"""SFT job configuration: one small dataclass per component, read from TOML, overridden by `--section.key value`."""
from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..lora import DEFAULT_TARGETS

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
    on_error: str = "skip"           # skip | raise
    train_on_thinking: bool = True

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.rows_per_step <= 0:
            raise ValueError("data.seq_len and data.rows_per_step: must be positive")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error: expected skip or raise, got {self.on_error!r}")


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
class LoRASection:
    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    init_from: str = ""              # an adapter dir (PEFT's format or nemoh's) to start from; it sets r/alpha/targets

    def __post_init__(self) -> None:
        if self.init_from and not self.enabled:
            raise ValueError("lora.init_from: set lora.enabled = true as well")


@dataclass
class CheckpointConfig:
    dir: str = "runs/sft"            # run directory: metrics, TensorBoard, checkpoints, final model
    every: int = 0                   # save every N steps (0: only at the end)
    keep: int = 2
    resume: bool = False


@dataclass
class ParallelSection:
    dp_shard: int = -1               # under torchrun: FSDP2 over all ranks
    tp: int = 1
    ep: int = 1
    mixed_precision: bool = False
    cpu_offload: bool = False
    activation_checkpointing: bool = False
    dp_replicate: int = 1            # > 1: HSDP (shard within a group of ranks, replicate across groups)


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRASection = field(default_factory=LoRASection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelSection = field(default_factory=ParallelSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, (list, tuple)):
        return ast.literal_eval(value)
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None, cls: type = SFTConfig) -> Any:
    """TOML file (optional) + ["--section.key", "value", ...] overrides -> validated config."""
    raw: dict[str, dict[str, Any]] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"{path}: cannot read config ({e})") from e
    sections = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    items = list(overrides or [])
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or "." not in flag:
            raise ValueError(f"override {flag!r}: expected --section.key value")
        if "=" in flag:
            flag, value = flag.split("=", 1)
        elif items:
            value = items.pop(0)
        else:
            raise ValueError(f"override {flag}: missing value")
        section, key = flag[2:].replace("-", "_").split(".", 1)
        if section not in sections or not hasattr(getattr(defaults, section), key):
            raise ValueError(f"override {flag}: unknown setting")
        try:
            raw.setdefault(section, {})[key] = _coerce(value, getattr(getattr(defaults, section), key))
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{section}.{key}: {e}") from e
    built = {}
    for name, f in sections.items():
        sub = raw.pop(name, {})
        sub_cls = type(getattr(defaults, name))
        known = {x.name for x in dataclasses.fields(sub_cls)}
        unknown = sorted(set(sub) - known)
        if unknown:
            raise ValueError(f"[{name}]: unknown settings {unknown}")
        built[name] = sub_cls(**sub)
    if raw:
        raise ValueError(f"config: unknown sections {sorted(raw)}")
    return cls(**built)
