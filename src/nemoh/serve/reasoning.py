"""Reasoning split at the token level: tokens before </think> are `reasoning_content`, the rest `content`.

Works on token ids rather than text, so special-token stripping cannot hide the boundary, and the same object
serves streaming (delta per new token) and the final answer."""
from __future__ import annotations

from typing import cast

from ..engine.detokenizer import IncrementalDetokenizer
from ..tokenizer import Tokenizer


class ChannelDecoder(IncrementalDetokenizer):
    """Incremental detokenisation of one channel (new tokens only): `add` returns the newly completed text.
    Added tokens other than `keep` are dropped."""

    def __init__(self, tokenizer: Tokenizer, keep: set[int]):
        super().__init__(tokenizer, skip=frozenset(tokenizer.special_ids - keep))


class ReasoningSplitter:
    """Feed output tokens one by one; each call returns (reasoning delta, content delta)."""

    def __init__(self, tokenizer: Tokenizer, starts_in_reasoning: bool, enabled: bool = True):
        self.tok = tokenizer
        self.enabled = enabled and tokenizer.think_end_id is not None
        self.in_reasoning = starts_in_reasoning and self.enabled
        keep = cast(set[int], {tokenizer.token_to_id(t) for t in ("<tool_call>", "</tool_call>")} - {None})
        self.reasoning = ChannelDecoder(tokenizer, set())
        self.content = ChannelDecoder(tokenizer, keep)  # tool-call tags stay in content for the tool parser

    def add(self, token: int) -> tuple[str, str]:
        if self.enabled and token == self.tok.think_start_id:
            self.in_reasoning = True
            return "", ""
        if self.enabled and token == self.tok.think_end_id:
            self.in_reasoning = False
            return "", ""
        if self.in_reasoning:
            return self.reasoning.add(token), ""
        return "", self.content.add(token)
