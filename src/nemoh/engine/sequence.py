"""Sequence: one sample being generated (a request with n > 1 becomes n sequences sharing a prompt)."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from .detokenizer import IncrementalDetokenizer
from .sampling_params import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


@dataclass
class Sequence:
    request_id: str
    index: int                               # sample index within its request (0..n-1)
    prompt_token_ids: list[int]
    params: SamplingParams
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    slot: int = -1
    num_prefilled: int = 0                   # prompt tokens already in the cache (chunked prefill)
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    routed_experts: list[torch.Tensor] = field(default_factory=list)   # per forward: (m, T_in, k)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    text: str = ""                            # the output text cut at its stop string (when a stop string ended it)
    detok: IncrementalDetokenizer | None = None  # the output text so far, grown by the new tokens only
    thinking: bool = False                    # inside <think> ... </think>
    thinking_tokens: int = 0
    generator: torch.Generator | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def last_token(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def is_prefilled(self) -> bool:
        return self.num_prefilled == len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED
