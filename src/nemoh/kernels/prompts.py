"""The generation prompt (zero-shot or one-shot, or a user file) and code extraction from a reply."""
from __future__ import annotations

import re
from pathlib import Path

from .problems import DATA, Problem

ZERO_SHOT = """You write custom Triton kernels that replace PyTorch operators for speed.

Here is a PyTorch model (KernelBench format: `Model`, `get_inputs`, `get_init_inputs`):

```python
{problem_code}
```

Write `class ModelNew(nn.Module)` with the same constructor arguments and forward signature that computes the same
outputs with your own Triton kernels (`@triton.jit`, launched from `forward`). Do not call the PyTorch operators
you replace, do not inherit from `Model`, do not catch errors to fall back. Give the complete, self-contained Python
module (imports included) in one ```python block at the end of your answer."""

ONE_SHOT = """You write custom Triton kernels that replace PyTorch operators for speed.

Example. The model:

```python
{example_problem}
```

A correct answer:

```python
{example_solution}
```

Now this model:

```python
{problem_code}
```

Write `class ModelNew(nn.Module)` with the same constructor arguments and forward signature that computes the same
outputs with your own Triton kernels. Do not call the PyTorch operators you replace, do not inherit from `Model`, do
not catch errors to fall back. Give the complete Python module in one ```python block at the end of your answer."""

TEMPLATES = {"zero-shot": ZERO_SHOT, "one-shot": ONE_SHOT}


def load_template(name_or_path: str) -> str:
    """A built-in template by name, or a file with `{problem_code}` (and, for one-shot files, `{example_problem}`
    and `{example_solution}`)."""
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(f"--prompt: {name_or_path!r} is neither a built-in template {sorted(TEMPLATES)} nor a file")
    text = path.read_text(encoding="utf-8")
    if "{problem_code}" not in text:
        raise ValueError(f"--prompt: {path} has no {{problem_code}} placeholder")
    return text


def render(template: str, problem: Problem) -> str:
    example_problem = (DATA / "problems" / "1_SiLU.py").read_text()
    example_solution = (DATA / "solutions" / "1_SiLU.py").read_text()
    return (template.replace("{example_problem}", example_problem.strip())
            .replace("{example_solution}", example_solution.strip())
            .replace("{problem_code}", problem.code.strip()))


FENCE_RE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def split_reasoning(text: str, reasoning: str | None = None) -> tuple[str, str]:
    """(reasoning, answer): the server's separate reasoning field if given, else the text up to `</think>`."""
    if reasoning:
        return reasoning, text
    if "</think>" in text:
        head, _, tail = text.rpartition("</think>")
        return head.replace("<think>", "", 1).strip(), tail
    return "", text


def extract_code(answer: str) -> str | None:
    """The last fenced python block of the answer (after the reasoning), or None."""
    blocks = FENCE_RE.findall(answer)
    return blocks[-1].strip() + "\n" if blocks else None
