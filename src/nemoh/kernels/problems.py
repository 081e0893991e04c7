"""KernelBench-style problems: a PyTorch `Model` plus `get_inputs()` and `get_init_inputs()` in one source file.

Sources (`load_problems(spec)`):
  builtin                    nemoh's own set (generic ops and nemotron_h's ops, sizes that run on a CPU)
  probes                     problems that expose shortcuts (non-negative inputs, tiny outputs, an init scalar)
  path/to/KernelBench        a checkout: level folders (`level1/1_Square_matrix_multiplication_.py`, ...)
  path/to/level1             one folder of `N_Name.py` files
  problems.jsonl / .parquet  a table with a `code` column (optional: name, level, problem_id)
A comma-separated list combines sources; `spec@level1` keeps one level.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"
FILE_RE = re.compile(r"^(\d+)_(.+)\.py$")


@dataclass(frozen=True)
class Problem:
    name: str          # "level1/19_ReLU" or "nemoh/1_SiLU": unique across sources
    level: str
    problem_id: int
    code: str

    @property
    def stem(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def check_problem(code: str, where: str) -> None:
    """A problem must define Model, get_inputs and get_init_inputs (checked on the source, nothing runs)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise ValueError(f"{where}: not valid Python ({e.msg}, line {e.lineno})") from e
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    missing = [n for n in ("Model", "get_inputs", "get_init_inputs") if n not in names]
    if missing:
        raise ValueError(f"{where}: not a KernelBench problem, missing {', '.join(missing)}")


def _from_dir(folder: Path, level: str) -> list[Problem]:
    out = []
    for f in sorted(folder.glob("*.py"), key=lambda p: int(m.group(1)) if (m := FILE_RE.match(p.name)) else 1 << 30):
        m = FILE_RE.match(f.name)
        if not m:
            continue
        code = f.read_text(encoding="utf-8")
        check_problem(code, str(f))
        out.append(Problem(f"{level}/{f.stem}", level, int(m.group(1)), code))
    return out


def _from_table(path: Path) -> list[Problem]:
    from ..data import ErrorLog, read_rows
    out = []
    for i, row in enumerate(read_rows(path, ErrorLog("raise"))):
        code = row.data.get("code")
        if not isinstance(code, str):
            raise ValueError(f"{row.where}: field 'code' must be a string with the problem source")
        check_problem(code, row.where)
        level = str(row.data.get("level", path.stem))
        pid = int(row.data.get("problem_id", i + 1))
        name = str(row.data.get("name", f"{pid}_problem"))
        out.append(Problem(f"{level}/{name}", level, pid, code))
    return out


def load_problems(spec: str = "builtin") -> list[Problem]:
    problems: list[Problem] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        src, _, only = part.partition("@")
        if src == "builtin":
            found = _from_dir(DATA / "problems", "nemoh")
        elif src == "probes":
            found = _from_dir(DATA / "probes", "probes")
        else:
            path = Path(src)
            if not path.exists():
                raise ValueError(f"--problems: {path}: no such file or folder")
            if path.is_file():
                found = _from_table(path)
            else:
                levels = sorted(d for d in path.iterdir() if d.is_dir() and d.name.startswith("level"))
                found = [p for d in levels for p in _from_dir(d, d.name)] if levels else _from_dir(path, path.name)
        if only:
            found = [p for p in found if p.level == only]
        if not found:
            raise ValueError(f"--problems: {part}: no problems found (expected N_Name.py files or a code column)")
        problems += found
    names = [p.name for p in problems]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"--problems: duplicate problem names {sorted(dup)[:5]}")
    return problems


def builtin_solution(problem: Problem) -> str | None:
    """nemoh's hand-written Triton solution for a built-in problem, if it ships one."""
    f = DATA / "solutions" / f"{problem.stem}.py"
    return f.read_text() if problem.level in ("nemoh", "probes") and f.exists() else None
