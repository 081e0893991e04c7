"""Rewards: math answers via math-verify (boxed answer after </think>), the dapo ±1 variant, exact match, and user
functions by import path (`module:function`, sync or async, per sample or per group). A reward that raises is
logged and scored 0 for that sample; it never stops the run."""
from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nemoh.rewards")


THINK_END = "</think>"


def is_correct(score):
    """A sample counts as correct when its reward is at least 1: every built-in reward gives exactly 1 for a correct
    answer (dapo gives -1 for a wrong one, partial credit stays below 1). Works on floats and tensors."""
    return score >= 1.0


def answer_part(response: str) -> str:
    """Only the text after the reasoning counts (the deepscaler grader's rule)."""
    return response.split(THINK_END)[-1] if THINK_END in response else response


def reward_text(token_ids: list[int], decode: Callable[[list[int]], str], think_end_id: int | None) -> str:
    """The response as rewards read it: `reasoning</think>answer`, the boundary found by token id. The engine's
    `CompletionOutput.text` skips special tokens, and Nemotron's tokenizer marks `</think>` special, so in that text
    the end of the reasoning is gone; here it is restored whatever the tokenizer marks special."""
    if think_end_id is None or think_end_id not in token_ids:
        return decode(token_ids)
    k = len(token_ids) - 1 - token_ids[::-1].index(think_end_id)
    return decode(token_ids[:k]) + THINK_END + decode(token_ids[k + 1:])


def last_boxed(text: str) -> str | None:
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    depth, j = 0, i + len("\\boxed{")
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            if depth == 0:
                return text[j:k]
            depth -= 1
    return None


def math_reward(response: str, label: Any) -> float:
    """1.0 if the boxed answer after </think> equals the label under math-verify, else 0.0."""
    from math_verify import parse, verify
    boxed = last_boxed(answer_part(response))
    if boxed is None:
        return 0.0
    gold = parse(f"${label}$" if not str(label).startswith("$") else str(label))
    return 1.0 if verify(gold, parse(f"${boxed}$")) else 0.0


def dapo_reward(response: str, label: Any) -> float:
    """DAPO's ±1: +1 correct, -1 otherwise."""
    return 1.0 if math_reward(response, label) > 0 else -1.0


def exact_match(response: str, label: Any) -> float:
    """The answer part, stripped, equals the label as text."""
    return 1.0 if answer_part(response).strip() == str(label).strip() else 0.0


def number_match(response: str, label: Any) -> float:
    """The answer part is exactly the label's number (used by the built-in arithmetic task)."""
    m = re.fullmatch(r"\s*(-?\d+)\s*", answer_part(response))
    return 1.0 if m and int(m.group(1)) == int(label) else 0.0


def number_partial(response: str, label: Any) -> float:
    """Partial credit for a number: 1 exact, 0.5 off by one, 0.25 off by two, else (or unparsable) 0."""
    m = re.fullmatch(r"\s*(-?\d+)\s*", answer_part(response))
    if not m:
        return 0.0
    return {0: 1.0, 1: 0.5, 2: 0.25}.get(abs(int(m.group(1)) - int(label)), 0.0)


def kernelbench(responses: list[str], label: Any) -> list[float]:
    """The KernelBench verifier as a per-group reward (nemoh.kernels.reward): sandboxed, concurrent-safe."""
    from ..kernels.reward import kernelbench_reward
    return kernelbench_reward(responses, label)


REWARDS: dict[str, Callable[..., Any]] = {"math": math_reward, "dapo": dapo_reward, "exact_match": exact_match,
                                          "number_match": number_match, "number_partial": number_partial,
                                          "kernelbench": kernelbench}


class RewardFn:
    """Scores a group of responses to one prompt. `name` is a registry key or `module:function`; a function whose
    first parameter is named `responses` is called once per group with lists, else once per sample."""

    def __init__(self, name: str):
        if name in REWARDS:
            self.fn = REWARDS[name]
        elif ":" in name:
            module, attr = name.split(":", 1)
            try:
                self.fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"reward.function: cannot import {name!r} ({e})") from e
        else:
            raise ValueError(f"reward.function: unknown {name!r}; use one of {sorted(REWARDS)} or module:function")
        self.name = name
        params = list(inspect.signature(self.fn).parameters)
        self.per_group = bool(params) and params[0] == "responses"
        self.failures = 0

    def _call(self, *args: Any) -> Any:
        out = self.fn(*args)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        return out

    def __call__(self, responses: list[str], label: Any, prompt: Any = None) -> list[float]:
        if self.per_group:
            try:
                scores = [float(s) for s in self._call(responses, label)]
                if len(scores) != len(responses):
                    raise ValueError(f"returned {len(scores)} scores for {len(responses)} responses")
                return scores
            except Exception as e:  # a broken reward must not kill the run
                self.failures += len(responses)
                log.warning("reward %s failed on a group: %r; scored 0", self.name, e)
                return [0.0] * len(responses)
        scores = []
        for r in responses:
            try:
                scores.append(float(self._call(r, label)))
            except Exception as e:
                self.failures += 1
                log.warning("reward %s failed on a sample: %r; scored 0", self.name, e)
                scores.append(0.0)
        return scores


async def _await(x: Any) -> Any:
    return await x
