"""Built-in verifiable tasks for the CPU demo, generated on the fly, each with a disjoint held-out split (a rule on
the input decides the split, so no held-out input is ever trained on) and the reward that scores it."""
from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ..data.prompts import PromptExample


def addition_examples(n: int, seed: int, max_operand: int = 9, held_out: bool = False) -> list[PromptExample]:
    """"a+b" -> a+b. Pairs with (a + 2b) % 5 == 0 are held out of training and form the evaluation split."""
    rng = random.Random(seed)
    out: list[PromptExample] = []
    while len(out) < n:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if ((a + 2 * b) % 5 == 0) != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": f"{a}+{b}"}], a + b, f"addition:{a}+{b}"))
    return out


def reverse_examples(n: int, seed: int, held_out: bool = False, min_len: int = 3,
                     max_len: int = 4) -> list[PromptExample]:
    """A short lowercase word -> the word reversed. Words whose first letter is in 'aeiou' are held out."""
    rng = random.Random(seed)
    out: list[PromptExample] = []
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len)))
        if (w[0] in "aeiou") != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": w}], w[::-1], f"reverse:{w}"))
    return out


def copy_examples(n: int, seed: int, held_out: bool = False) -> list[PromptExample]:
    """A short lowercase word -> the same word. Words starting with a vowel are held out."""
    return [PromptExample(p.prompt, p.label[::-1], p.where.replace("reverse", "copy"))
            for p in reverse_examples(n, seed, held_out)]


def first_letter_examples(n: int, seed: int, held_out: bool = False) -> list[PromptExample]:
    """A short lowercase word -> its first letter; words ending in a vowel are held out."""
    rng = random.Random(seed)
    out: list[PromptExample] = []
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
        if (w[-1] in "aeiou") != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": w}], w[0], f"first:{w}"))
    return out


def _held_out(key: str) -> bool:
    """A quarter of all inputs, chosen by a hash of the input (stable across Python runs, unlike hash())."""
    return zlib.crc32(key.encode()) % 4 == 0


def last_letter_examples(n: int, seed: int, held_out: bool = False) -> list[PromptExample]:
    """A short lowercase word -> its last letter; words starting with a vowel are held out (every answer letter
    still occurs in training)."""
    rng = random.Random(seed)
    out: list[PromptExample] = []
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
        if (w[0] in "aeiou") != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": w}], w[-1], f"last:{w}"))
    return out


def count_examples(n: int, seed: int, held_out: bool = False) -> list[PromptExample]:
    """A string of 3-8 letters from 'ab' -> how many 'a' it holds (0-8); a hashed quarter of strings is held out."""
    rng = random.Random(seed)
    out: list[PromptExample] = []
    while len(out) < n:
        w = "".join(rng.choice("ab") for _ in range(rng.randint(3, 8)))
        if _held_out(w) != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": w}], w.count("a"), f"count:{w}"))
    return out


def two_step_examples(n: int, seed: int, held_out: bool = False) -> list[PromptExample]:
    """"a+b-c" (digits, result >= 0) -> the result, scored with partial credit (number_partial); a hashed quarter
    of the expressions is held out."""
    rng = random.Random(seed)
    out: list[PromptExample] = []
    while len(out) < n:
        a, b, c = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)
        expr = f"{a}+{b}-{c}"
        if a + b - c < 0 or _held_out(expr) != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": expr}], a + b - c, f"two_step:{expr}"))
    return out


@dataclass(frozen=True)
class Task:
    """A generator `examples(n, seed, held_out=False)` and the name of the reward that scores it."""
    examples: Callable[..., list[PromptExample]]
    reward: str = "exact_match"

    def __call__(self, n: int, seed: int, held_out: bool = False) -> list[PromptExample]:
        return self.examples(n, seed, held_out=held_out)


TASKS: dict[str, Task] = {
    "addition": Task(addition_examples, "number_match"), "reverse": Task(reverse_examples),
    "copy": Task(copy_examples), "first_letter": Task(first_letter_examples), "last_letter": Task(last_letter_examples),
    "count": Task(count_examples, "number_match"), "two_step": Task(two_step_examples, "number_partial"),
}


def task_reward(prompts: str, function: str) -> str:
    """`reward.function = "task"`: the built-in task's own reward, exact_match for prompt files; else `function`."""
    if function != "task":
        return function
    if prompts.startswith("builtin:") and prompts.split(":", 1)[1] in TASKS:
        return TASKS[prompts.split(":", 1)[1]].reward
    return "exact_match"
