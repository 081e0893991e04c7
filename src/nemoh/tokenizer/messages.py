"""OpenAI chat messages -> the shapes Hub chat templates expect, done once before every rendering.

The OpenAI API (and so every agent framework) sends an assistant's `tool_calls[].function.arguments` as a JSON
*string* and may send `content` as a list of parts; published templates iterate `arguments|items` and print
`content` as text. vLLM parses and joins them before rendering; `normalize_messages` does the same for nemoh's
server, chat datasets and `LLM.chat`/`generate`, since all of them render through `Tokenizer.apply_chat_template`.
"""
from __future__ import annotations

import json
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_arguments(args: Any, field: str) -> dict[str, Any]:
    if isinstance(args, str):
        try:
            args = json.loads(args, parse_constant=_reject_constant) if args.strip() else {}
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{field}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(args, dict):
        raise ValueError(f"{field}: must be a JSON object, got {type(args).__name__}")
    return args


def _join_parts(content: Any, field: str) -> Any:
    """A list of content parts -> their texts joined by newlines (vLLM's "string" content format)."""
    if not isinstance(content, list):
        return content
    texts = []
    for k, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"{field}[{k}]: only text parts are supported, got {kind!r}")
    return "\n".join(texts)


def _normalize_tool_call(call: Any, field: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise ValueError(f"{field}: must be an object")
    call = dict(call)
    if isinstance(call.get("function"), dict):
        fn = dict(call["function"])
        if "arguments" in fn:
            fn["arguments"] = _parse_arguments(fn["arguments"], f"{field}.function.arguments")
        call["function"] = fn
    elif "arguments" in call:  # the flat {"name", "arguments"} form some datasets use
        call["arguments"] = _parse_arguments(call["arguments"], f"{field}.arguments")
    return call


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `messages` with tool-call arguments as mappings, content-part lists joined into text, and each
    `tool` message's `name` filled in from the call its `tool_call_id` answers. Raises ValueError naming the
    field (`messages[2].tool_calls[0].function.arguments`). The input is not modified."""
    if not isinstance(messages, list):
        raise ValueError(f"messages: must be a list, got {type(messages).__name__}")
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}]: must be an object, got {type(m).__name__}")
        m = dict(m)
        if "content" in m:
            m["content"] = _join_parts(m["content"], f"messages[{i}].content")
        calls = m.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise ValueError(f"messages[{i}].tool_calls: must be a list")
            m["tool_calls"] = [_normalize_tool_call(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(calls)]
            for c in m["tool_calls"]:
                fn = c.get("function") if isinstance(c.get("function"), dict) else c
                if isinstance(c.get("id"), str) and isinstance(fn.get("name"), str):
                    call_names[c["id"]] = fn["name"]
        if m.get("role") == "tool" and "name" not in m and m.get("tool_call_id") in call_names:
            m["name"] = call_names[m["tool_call_id"]]
        out.append(m)
    return out
