"""The layering rules docs/architecture.md states, checked on the source with `ast` (lazy imports inside functions
count: an import is an arrow wherever it sits; `if TYPE_CHECKING:` imports are annotations only and do not)."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nemoh"
# model -> checkpoint only (from_pretrained/save_pretrained pass the class and its fp32 list in; checkpoint/ never
# imports model/), so no package cycle is left
KNOWN_CYCLES: set[frozenset[str]] = set()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports(path: Path) -> list[str]:
    """Absolute nemoh module names imported by `path` (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    pkg = path.relative_to(SRC.parent).with_suffix("").parts[:-1]       # ("nemoh", "train")
    if path.name == "__init__.py":
        pkg = path.relative_to(SRC.parent).parts[:-1]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("nemoh")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("nemoh"):
                out.append(mod)
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (SRC / parts[1]).is_dir() else None


def _files() -> list[Path]:
    return [p for p in SRC.rglob("*.py") if "kernels/data" not in p.as_posix()]


def test_nothing_outside_cli_imports_cli():
    bad = [f"{p.relative_to(SRC)} imports {m}" for p in _files() if "cli" not in p.relative_to(SRC).parts[:1]
           for m in imports(p) if m == "nemoh.cli" or m.startswith("nemoh.cli.")]
    assert not bad, bad


def test_the_parser_sees_lazy_imports(tmp_path):
    f = SRC / "train" / "setup.py"
    assert "nemoh.model.tiny" in imports(f)           # a module-level relative import, resolved
    probe = SRC / "rl" / "config.py"
    assert "nemoh.rl.backends" in imports(probe)      # one inside __post_init__


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in _files():
        src = _package("nemoh." + ".".join(p.relative_to(SRC).with_suffix("").parts))
        if src is None:
            continue
        for m in imports(p):
            dst = _package(m)
            if dst and dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), set(), [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_packages():
    found = cycles(package_graph())
    assert found == KNOWN_CYCLES, f"package cycles: {sorted(map(sorted, found))}"


@pytest.mark.parametrize("graph,expected", [({"a": {"b"}, "b": {"a"}}, {frozenset("ab")}), ({"a": {"b"}}, set())])
def test_cycle_finder(graph, expected):
    assert cycles(graph) == expected
