"""Prompt/label rows (the dapo-math-17k layout) for RL: a prompt (a string or a message list) and a label, under
configurable keys (miles' --input-key / --label-key)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .readers import ErrorLog, Row


@dataclass
class PromptExample:
    prompt: str | list[dict[str, Any]]
    label: Any
    where: str


def load_prompt_examples(rows: list[Row], errors: ErrorLog, input_key: str = "prompt",
                         label_key: str = "label") -> list[PromptExample]:
    out = []
    for row in rows:
        d = row.data
        if not isinstance(d, dict):
            errors.report(row.where, "row is not an object")
            continue
        if input_key not in d:
            errors.report(row.where, f"missing key '{input_key}'")
            continue
        if label_key not in d:
            errors.report(row.where, f"missing key '{label_key}'")
            continue
        p = d[input_key]
        ok = (isinstance(p, str) and p.strip()) or (
            isinstance(p, list) and p and all(isinstance(m, dict) and "role" in m and "content" in m for m in p))
        if not ok:
            errors.report(row.where, f"'{input_key}' must be a non-empty string or a list of messages")
            continue
        out.append(PromptExample(p, d[label_key], row.where))
    return out
