"""Static capability rules for candidate source (the first layer, stdlib only; the candidate process loads this
file by path). A kernel needs torch, triton and a little arithmetic; it does not need introspection, private
APIs, the host's libraries or the power to rebind other modules' attributes — the tools every known way of
reaching the judge, switching off a monitor or computing elsewhere starts from. The runtime layers (process
boundary, launch provenance, input trials) do not rely on these rules; the rules make tampering with the
in-process monitor a matter of beating a parser first.
"""
from __future__ import annotations

import ast

ALLOWED_IMPORTS = {"torch", "triton", "math", "typing", "functools", "dataclasses", "itertools", "collections",
                   "numbers", "enum", "__future__"}
BANNED_NAMES = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "vars", "globals",
                "locals", "open", "breakpoint", "input", "memoryview", "__builtins__", "__loader__", "__spec__"}
# frame, code and generator internals: how a candidate reaches its caller's variables without `sys`
BANNED_ATTRS = {"f_back", "f_locals", "f_globals", "f_builtins", "f_code", "gi_frame", "cr_frame", "ag_frame",
                "tb_frame", "tb_next", "co_code", "gi_code", "cr_code", "func_globals", "cpp_extension",
                "load_inline", "build", "compile_module_from_src", "knobs", "from_numpy", "numpy", "frombuffer",
                "from_file", "ctypes", "untyped_storage",
                "data_ptr_hook"}
ALLOWED_DUNDERS = {"__init__", "__name__"}


def findings(tree: ast.AST) -> list[str]:
    """What the source does that a kernel has no need to: each finding a line of the verdict."""
    out: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import):
            out += [f"imports {a.name} (line {line})" for a in node.names if not _allowed_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level or not _allowed_module(node.module or ""):
                out.append(f"imports from {node.module or '.'} (line {line})")
            out += [f"imports private name {a.name} (line {line})" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Name) and node.id in BANNED_NAMES:
            out.append(f"uses {node.id} (line {line})")
        elif isinstance(node, ast.Name) and node.id.startswith("__") and node.id not in ALLOWED_DUNDERS:
            out.append(f"uses {node.id} (line {line})")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and node.attr not in ALLOWED_DUNDERS:
                out.append(f"reaches a private attribute .{node.attr} (line {line})")
            elif node.attr in BANNED_ATTRS:
                out.append(f"uses .{node.attr} (line {line})")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            out += [f"rebinds {ast.unparse(t)} outside its own object (line {line})"
                    for t in _flat(targets) if isinstance(t, ast.Attribute) and _root(t) != "self"]
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            out.append(f"declares {type(node).__name__.lower()} names (line {line})")
        elif isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            for base in node.bases:
                if (isinstance(base, ast.Name) and base.id == "Model"
                        or isinstance(base, ast.Attribute) and base.attr == "Model"):
                    out.append("ModelNew subclasses the reference Model")
        elif isinstance(node, ast.Try) and any(not all(isinstance(s, ast.Raise) for s in h.body)
                                               for h in node.handlers):
            out.append(f"try/except fallback (line {line})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("Stream", "stream", "ExternalStream"):
            out.append(f"uses a side stream (line {node.lineno})")
    return list(dict.fromkeys(out))


def _allowed_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in ALLOWED_IMPORTS and not any(p.startswith("_") for p in parts[1:]) and \
        not any(p in BANNED_ATTRS for p in parts)


def _flat(targets):
    for t in targets:
        if isinstance(t, (ast.Tuple, ast.List)):
            yield from _flat(t.elts)
        else:
            yield t


def _root(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None
