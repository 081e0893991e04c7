"""Chat rows -> token ids + loss mask through the checkpoint's chat template.

The mask covers exactly the assistant turns: each assistant message's span is what the template adds when that
message is appended (render(messages[:i+1]) minus render(messages[:i])), less the role header the generation prompt
would have written, and up to its end-of-turn token. With `train_on_thinking=False` the reasoning up to and
including `</think>` is masked too. Segments are tokenised one by one and checked against the tokenisation of the
whole rendered conversation, token by token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tokenizer import Tokenizer
from .readers import ErrorLog, Row

ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[int]          # 1 where the token is trained on (predicted from the previous ones)
    where: str


def validate_chat(row: Any, key: str = "messages") -> str | None:
    """The reason a row is not a usable conversation, or None."""
    if not isinstance(row, dict):
        return "row is not an object"
    msgs = row.get(key)
    if msgs is None:
        return f"missing key '{key}'"
    if not isinstance(msgs, list) or not msgs:
        return f"'{key}' must be a non-empty list"
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"message {j}: role must be one of {sorted(ROLES)}"
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            return f"message {j}: content must be a string"
        if m["role"] == "assistant" and not (content or m.get("tool_calls") or m.get("reasoning_content")):
            return f"message {j}: empty assistant message"
        if "reasoning_content" in m and not isinstance(m["reasoning_content"], (str, type(None))):
            return f"message {j}: reasoning_content must be a string"
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant message to train on"
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "'tools' must be a list"
    return None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_chat(tok: Tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  train_on_thinking: bool = True, **template_kwargs: Any) -> tuple[list[int], list[int]]:
    def render(msgs: list[dict], gen: bool = False) -> str:
        return tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen, **template_kwargs) if msgs else ""

    full = render(messages)
    ids: list[int] = []
    mask: list[int] = []
    done = 0                                   # characters of `full` already tokenised
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = render(messages[:i]), render(messages[: i + 1])
        if not after.startswith(before) or not full.startswith(after) or len(before) < done:
            raise ValueError("chat template: rendering is not prefix-stable, cannot locate assistant turns")
        context = tok.encode(full[done:len(before)])
        span = tok.encode(after[len(before):])
        # the role header is what the generation prompt would have written: not trained (compared in tokens,
        # so the boundary never falls inside a special token)
        head = _common_prefix(span, tok.encode(render(messages[:i], gen=True)[len(before):]))
        stop = span.index(tok.eos_token_id, head) + 1 if tok.eos_token_id in span[head:] else len(span)
        trained = [0] * head + [1] * (stop - head) + [0] * (len(span) - stop)
        if not train_on_thinking and tok.think_end_id in span[head:stop]:
            cut = span.index(tok.think_end_id, head) + 1
            trained[head:cut] = [0] * (cut - head)
        ids += context + span
        mask += [0] * len(context) + trained
        done = len(after)
    rest = tok.encode(full[done:])
    ids += rest
    mask += [0] * len(rest)
    if ids != tok.encode(full):
        raise ValueError("tokenizer: segment-wise tokenisation differs from the whole conversation's")
    return ids, mask


def load_chat_examples(rows: list[Row], tok: Tokenizer, errors: ErrorLog, key: str = "messages",
                       train_on_thinking: bool = True, max_len: int | None = None) -> list[Example]:
    out = []
    for row in rows:
        reason = validate_chat(row.data, key)
        if reason is None:
            try:
                ids, mask = tokenize_chat(tok, row.data[key], row.data.get("tools"), train_on_thinking)
            except Exception as e:  # a template that rejects the row is the row's problem
                reason = f"could not render: {e}"
        if reason is None and max_len is not None and len(ids) > max_len:
            reason = f"{len(ids)} tokens exceed max_len={max_len}"
        if reason is not None:
            errors.report(row.where, reason)
            continue
        out.append(Example(ids, mask, row.where))
    return out
