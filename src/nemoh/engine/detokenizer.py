"""Incremental detokenisation and stop-string search over the new text only, so that a generation costs time linear
in its length (a full re-decode per token is quadratic).

Each step decodes a short window of token ids, `ids[prefix:]`, and keeps the part past `ids[prefix:read]` (the
look-back): tokenizers whose decoding of a token depends on its neighbours (a SentencePiece leading space, a
multi-token UTF-8 character) see the same context as a full decode. Text ending in U+FFFD is held back until the
character completes; `flush` releases what is left when the sequence ends, so `text` equals a full decode.
"""
from __future__ import annotations

from ..tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed output tokens one by one; `add` returns the newly completed text. Token ids in `skip` are dropped (the
    special tokens, for `skip_special_tokens`)."""

    def __init__(self, tokenizer: Tokenizer, skip: set[int] | frozenset[int] = frozenset()):
        self.tokenizer, self.skip = tokenizer, skip
        self.ids: list[int] = []
        self.text = ""
        self.prefix = self.read = 0     # window = ids[prefix:]; ids[prefix:read] is already in `text`
        self._prefix_text = ""

    def add(self, token: int) -> str:
        if token in self.skip:
            return ""
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Release held-back text (an incomplete or invalid UTF-8 tail decodes as U+FFFD, as a full decode does)."""
        return self._advance(final=True) if self.read < len(self.ids) else ""

    def _advance(self, final: bool) -> str:
        window = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=False)
        if len(window) <= len(self._prefix_text) or (window.endswith(_REPLACEMENT) and not final):
            return ""  # nothing new yet, or a character still incomplete: wait for its next bytes
        delta = window[len(self._prefix_text):]
        self.prefix, self.read = self.read, len(self.ids)
        self._prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=False)
        self.text += delta
        return delta


def special_skip_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The added tokens that `decode(..., skip_special_tokens=True)` drops (those flagged special)."""
    return frozenset(t for t in tokenizer.special_ids if tokenizer.decode([t], skip_special_tokens=True) == "")


def find_stop(text: str, new_chars: int, stops: list[str]) -> tuple[int, str] | None:
    """The first stop string (in `stops` order) that ends within the last `new_chars` characters of `text`:
    (its start, the string), or None. Only a bounded tail is searched: what came before was checked already."""
    if new_chars <= 0:
        return None
    for s in stops:
        at = text.find(s, max(0, len(text) - new_chars - len(s) + 1))
        if at >= 0:
            return at, s
    return None
