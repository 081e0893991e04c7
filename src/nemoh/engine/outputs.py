"""What `LLM.generate` returns (vLLM's shapes: one RequestOutput per prompt, one CompletionOutput per sample)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]                     # log p(token) under softmax(logits / temperature), per output token
    finish_reason: str | None                 # "stop" | "length"
    stop_reason: str | int | None = None      # the stop string or stop token id that ended it
    top_logprobs: list[dict[int, float]] | None = None
    # (moe layers, prompt_len + len(token_ids) - 1, top-k): experts chosen for every position the training forward
    # feeds (prompt + all output tokens but the last); pass to the model as routed_experts for R3.
    routed_experts: Tensor | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True
