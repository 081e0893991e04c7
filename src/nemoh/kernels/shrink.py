"""`--shrink F`: a KernelBench problem at reduced sizes, so its correctness can be checked on a CPU.

The rule: every module-level assignment `NAME = <expr>` whose right side is built only of integer literals and
arithmetic (`M = 1024 * 2`, `dim = 16384`) and evaluates to an integer >= MIN_SIZE is a size; it becomes
max(MIN_SIZE // 2, value // F). Smaller integers (kernel sizes, strides, dims, groups, channels below MIN_SIZE)
and names computed from other names (`N = M * 2` follows the shrunk M) are left alone. The changes are recorded
in the verdict (`shrink`). Sizes written inside functions are not touched.
"""
from __future__ import annotations

import ast

MIN_SIZE = 32
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Pow, ast.LShift, ast.RShift)


def _literal_int(node: ast.expr) -> int | None:
    """The value of an integer expression made only of literals and + - * // ** << >>, else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, _OPS):
        a, b = _literal_int(node.left), _literal_int(node.right)
        if a is None or b is None or (isinstance(node.op, ast.Pow) and b > 64):
            return None
        try:
            return int(eval(compile(ast.Expression(node), "<size>", "eval"), {"__builtins__": {}}))
        except (ArithmeticError, ValueError):
            return None
    return None


def shrink_problem(code: str, factor: int) -> tuple[str, dict[str, list[int]]]:
    """(shrunk source, {name: [old, new]}). factor 1 returns the code unchanged."""
    if factor < 1:
        raise ValueError(f"shrink: factor must be >= 1, got {factor}")
    if factor == 1:
        return code, {}
    tree = ast.parse(code)
    changes: dict[str, list[int]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        value = _literal_int(node.value)
        if value is None or value < MIN_SIZE:
            continue
        new = max(MIN_SIZE // 2, value // factor)
        node.value = ast.copy_location(ast.Constant(new), node.value)
        changes[node.targets[0].id] = [value, new]
    return (ast.unparse(tree) + "\n" if changes else code), changes
