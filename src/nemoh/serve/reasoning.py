"""Reasoning split at the token level: tokens before </think> are `reasoning_content`, the rest `content`.

Works on token ids rather than text, so special-token stripping cannot hide the boundary, and the same object
serves streaming (delta per new token) and the final answer."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..tokenizer import Tokenizer


@dataclass
class ChannelDecoder:
    """Incremental detokenisation of one channel: returns only the newly completed text."""
    tokenizer: Tokenizer
    keep: set[int]
    ids: list[int] = field(default_factory=list)
    text: str = ""

    def add(self, token: int) -> str:
        if token in self.tokenizer.special_ids and token not in self.keep:
            return ""
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next byte
            return ""
        delta, self.text = full[len(self.text):], full
        return delta


class ReasoningSplitter:
    """Feed output tokens one by one; each call returns (reasoning delta, content delta)."""

    def __init__(self, tokenizer: Tokenizer, starts_in_reasoning: bool, enabled: bool = True):
        self.tok = tokenizer
        self.enabled = enabled and tokenizer.think_end_id is not None
        self.in_reasoning = starts_in_reasoning and self.enabled
        keep = {tokenizer.token_to_id(t) for t in ("<tool_call>", "</tool_call>")} - {None}
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
