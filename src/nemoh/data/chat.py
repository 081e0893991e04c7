"""Chat rows -> token ids + loss mask through the checkpoint's chat template, one or more examples per row.

How assistant spans are found. An assistant message i's span is what the template adds when that message is
appended, render(messages[:i+1]) minus render(messages[:i]), less the role header the generation prompt would have
written, up to its end-of-turn token. That span is the model's own output at inference only where both prefix
renderings are prefixes of the rendering being trained. Templates that rewrite history break this for earlier
turns: Nemotron-3's default `truncate_history_thinking` renders assistant turns before the last user message as
`<think></think>answer`, so in the full conversation those turns do not show what the model produced.

So a row becomes as few examples as keep every assistant turn exactly as the model sees and writes it at inference:
the full conversation trains every turn it renders faithfully; each remaining turn k (latest first) is trained in
the rendering of messages[:k+1], where turn k is the last one and nothing after it can rewrite it, together with the
earlier turns that rendering still shows faithfully. A template without history rewriting (agent traces whose
tool calls follow the last user turn included) gives one example per row; Nemotron's default gives one per user
turn. Training the full rendering with earlier turns masked out would lose them; training them as rewritten
(`<think></think>` in place of the reasoning) would teach the model to skip reasoning it produces at inference.

A row no example can mask (a template that raises, a prefix rendering that never matches) is skipped and reported
with its file:line and the reason; `ErrorLog` counts skips and stops the run above its threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tokenizer import Tokenizer, normalize_messages
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
    try:
        msgs = normalize_messages(msgs)
    except ValueError as e:
        return str(e)
    for j, m in enumerate(msgs):
        if m.get("role") not in ROLES:
            return f"messages[{j}].role: must be one of {sorted(ROLES)}"
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            return f"messages[{j}].content: must be a string or a list of text parts"
        if m["role"] == "assistant" and not (content or m.get("tool_calls") or m.get("reasoning_content")):
            return f"messages[{j}]: empty assistant message"
        if "reasoning_content" in m and not isinstance(m["reasoning_content"], (str, type(None))):
            return f"messages[{j}].reasoning_content: must be a string"
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


class _Renderer:
    """render(messages[:k]) for one conversation, each prefix rendered once."""

    def __init__(self, tok: Tokenizer, messages: list[dict], tools: list[dict] | None, kwargs: dict[str, Any]):
        self.tok, self.messages, self.tools, self.kwargs = tok, messages, tools, kwargs
        self._cache: dict[tuple[int, bool], str] = {}

    def __call__(self, k: int, gen: bool = False) -> str:
        if (k, gen) not in self._cache:
            if k == 0:  # nothing rendered yet; a template may not accept an empty conversation
                text = ""
            else:
                text = self.tok.apply_chat_template(self.messages[:k], tools=self.tools, add_generation_prompt=gen,
                                                    **self.kwargs)
            self._cache[(k, gen)] = text
        return self._cache[(k, gen)]

    def prompts(self, k: int) -> list[str]:
        """The generation prompts that could precede assistant message k at inference: the template's, and when
        the caller did not choose, also the one with thinking off (`enable_thinking=False`, the Nemotron/Qwen3
        switch), so a turn without reasoning is trained as the model writes it with thinking off."""
        if k == 0:
            return []
        out = [self(k, gen=True)]
        if "enable_thinking" not in self.kwargs:
            out.append(self.tok.apply_chat_template(self.messages[:k], tools=self.tools, add_generation_prompt=True,
                                                    enable_thinking=False, **self.kwargs))
        return out


def _mask_rendering(tok: Tokenizer, render: _Renderer, end: int, turns: list[int],
                    train_on_thinking: bool) -> tuple[list[int], list[int], list[int]]:
    """Tokenise render(messages[:end]) and train the assistant `turns` it shows as they are generated.
    Returns (ids, mask, the turns it does not show faithfully)."""
    full = render(end)
    ids: list[int] = []
    mask: list[int] = []
    done, left = 0, []                          # characters of `full` already tokenised
    for i in turns:
        before, after = render(i), render(i + 1)
        if not (after.startswith(before) and full.startswith(after) and len(before) >= done):
            left.append(i)
            continue
        context = tok.encode(full[done:len(before)])
        span = tok.encode(after[len(before):])
        # the role header is what the generation prompt would have written: not trained (compared in tokens,
        # so the boundary never falls inside a special token)
        head = max((_common_prefix(span, tok.encode(prompt[len(before):])) for prompt in render.prompts(i)),
                   default=0)
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
    return ids, mask, left


def chat_examples(tok: Tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  train_on_thinking: bool = True, **template_kwargs: Any) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) examples that together train every assistant turn as the model sees it at inference (see the
    module docstring). Raises ValueError naming the turn that cannot be located."""
    messages = normalize_messages(messages)
    render = _Renderer(tok, messages, tools, template_kwargs)
    pending = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    examples = []
    end = len(messages)
    while pending:
        ids, mask, left = _mask_rendering(tok, render, end, pending, train_on_thinking)
        if left == pending:  # not even the last pending turn renders as its own prefix: the template is unusable
            k = pending[-1]
            raise ValueError(f"chat template: cannot locate assistant turn messages[{k}] (render(messages[:{k}]) "
                             f"is not a prefix of render(messages[:{k + 1}]))")
        examples.append((ids, mask))
        pending, end = left, (left[-1] + 1 if left else end)
    return examples[::-1]


def tokenize_chat(tok: Tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  train_on_thinking: bool = True, **template_kwargs: Any) -> tuple[list[int], list[int]]:
    """One (ids, mask) for the whole conversation; raises ValueError when the template rewrites history so that
    the conversation needs several examples (use `chat_examples`)."""
    examples = chat_examples(tok, messages, tools, train_on_thinking, **template_kwargs)
    if len(examples) != 1:
        raise ValueError(f"chat template rewrites earlier turns: this conversation needs {len(examples)} examples "
                         "(use chat_examples)")
    return examples[0]


def load_chat_examples(rows: list[Row], tok: Tokenizer, errors: ErrorLog, key: str = "messages",
                       train_on_thinking: bool = True, max_len: int | None = None,
                       chat_template_kwargs: dict[str, Any] | None = None,
                       source: str | None = None) -> list[Example]:
    """Examples of every usable row; unusable rows go to `errors` (file:line and reason), and at the end
    `errors.finish` prints the summary and stops the run above the skip threshold."""
    out: list[Example] = []
    kept = 0
    for row in rows:
        reason = validate_chat(row.data, key)
        examples: list[tuple[list[int], list[int]]] = []
        if reason is None:
            try:
                examples = chat_examples(tok, row.data[key], row.data.get("tools"), train_on_thinking,
                                         **(chat_template_kwargs or {}))
            except Exception as e:  # a template that rejects the row is the row's problem, whatever it raises
                reason = f"could not render: {e}"
        if reason is None and max_len is not None:
            longest = max(len(ids) for ids, _ in examples)
            if longest > max_len:
                reason = f"{longest} tokens exceed max_len={max_len}"
        if reason is not None:
            errors.report(row.where, reason)
            continue
        kept += 1
        for n, (ids, mask) in enumerate(examples):
            out.append(Example(ids, mask, row.where if len(examples) == 1 else f"{row.where} (example {n + 1})"))
    errors.finish(kept, source)
    return out

