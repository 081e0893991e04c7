"""Built-in verifiable tasks for the CPU demo, generated on the fly, each with a disjoint held-out split."""
from __future__ import annotations

import random
import string
from typing import Callable

from ..data.prompts import PromptExample


def addition_examples(n: int, seed: int, max_operand: int = 9, held_out: bool = False) -> list[PromptExample]:
    """"a+b" -> a+b. Pairs with (a + 2b) % 5 == 0 are held out of training and form the evaluation split."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if ((a + 2 * b) % 5 == 0) != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": f"{a}+{b}"}], a + b, f"addition:{a}+{b}"))
    return out


def reverse_examples(n: int, seed: int, held_out: bool = False, min_len: int = 3, max_len: int = 4) -> list[PromptExample]:
    """A short lowercase word -> the word reversed. Words whose first letter is in 'aeiou' are held out."""
    rng = random.Random(seed)
    out = []
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
    out = []
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))
        if (w[-1] in "aeiou") != held_out:
            continue
        out.append(PromptExample([{"role": "user", "content": w}], w[0], f"first:{w}"))
    return out


TASKS: dict[str, Callable[..., list[PromptExample]]] = {"addition": addition_examples, "reverse": reverse_examples,
                                                         "copy": copy_examples, "first_letter": first_letter_examples}
