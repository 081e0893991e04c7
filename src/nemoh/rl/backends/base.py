"""The rollout backend interface and its registry.

A backend turns prompts into scored groups of samples and keeps its rollout weights equal to the trainer's.
`nemoh.rl.rollout.collect` (dynamic sampling, refills) drives `generate`; the trainer calls `sync_weights` after
every optimizer step, `evaluate` for the held-out accuracy. Backends: in-process engines (`engine`), SGLang's native
`/generate` (`sglang`) and vLLM's `/v1/completions` (`vllm`) over HTTP.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...data.prompts import PromptExample
    from ...model import NemotronHForCausalLM
    from ...parallel.parallelize import Layout
    from ...tokenizer import Tokenizer
    from ..config import RLConfig
    from ..rewards import RewardFn
    from ..rollout import Sample


@dataclass
class BackendContext:
    """What every backend may use; a backend takes what it needs."""
    cfg: RLConfig
    reward: RewardFn
    tokenizer: Tokenizer
    chat_kwargs: dict[str, Any] | None
    model: NemotronHForCausalLM                 # the trainer's policy, not yet sharded (in-process engines copy it)
    rank: int = 0                               # this process under torchrun
    world: int = 1
    layout: Layout | None = None                # the training mesh (data rank, tp) under torchrun, else None
    extra: dict[str, Any] = field(default_factory=dict)   # backend-specific runtime objects


class RolloutBackend(ABC):
    """Samples `n_samples_per_prompt` responses per prompt, scores them, and tracks the weight version."""

    def __init__(self, ctx: BackendContext):
        self.ctx = ctx
        self.weight_version = 0                 # optimizer steps the rollout weights include

    @abstractmethod
    def generate(self, prompts: list[PromptExample], seed: int) -> tuple[list[list[Sample]], int]:
        """One scored group per prompt (in prompt order) and the number of generated tokens."""

    @abstractmethod
    def sync_weights(self, model: NemotronHForCausalLM, version: int) -> None:
        """Make the rollout weights equal `model`'s; `version` becomes `self.weight_version`."""

    def evaluate(self, prompts: list[PromptExample], max_tokens: int) -> list[str] | None:
        """One greedy response text per prompt for the held-out accuracy, on rank 0 (None on other ranks)."""
        raise NotImplementedError(f"{type(self).__name__}: held-out evaluation is not implemented")

    def reward_failures(self) -> int:
        """Reward calls that failed so far, over all the backend's engines (every rank calls it)."""
        return self.ctx.reward.failures

    def close(self) -> None:
        """Release servers, threads or engines the backend started. The default is a no-op (nothing started)."""
        return None


ROLLOUT_BACKENDS: dict[str, type[RolloutBackend]] = {}


def register_backend(name: str) -> Callable[[type[RolloutBackend]], type[RolloutBackend]]:
    def wrap(cls: type[RolloutBackend]) -> type[RolloutBackend]:
        ROLLOUT_BACKENDS[name] = cls
        return cls
    return wrap


def build_backend(name: str, ctx: BackendContext) -> RolloutBackend:
    if name not in ROLLOUT_BACKENDS:
        choices = ", ".join(sorted(ROLLOUT_BACKENDS))
        raise ValueError(f"rollout.backend: unknown backend {name!r} (choose from {choices})")
    return ROLLOUT_BACKENDS[name](ctx)
