"""Job configs: TOML + `--section.key value` overrides -> a dataclass of section dataclasses, type-checked.

A job config (`SFTConfig`, `RLConfig`) is a dataclass whose fields are sections, each a small dataclass validated in
its own `__post_init__`. Every value, from the file or the command line, is checked against the field's annotation
while the config is built (`optim.betas: expected a list of 2 numbers, got (0.9,)`); unknown sections and keys, and
settings that moved (`MOVED`), are one clear line each.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import tomllib

T = TypeVar("T")

# settings that moved: old section.key -> new section.key (a config naming the old one gets told where it went)
MOVED = {"train.grad_clip": "optim.grad_clip"}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (ints widen to floats, lists become tuples where a tuple is declared), else ValueError
    naming `where`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ValueError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if tp is Any or tp is object:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
            if arg is not type(None):
                try:
                    return check_value(value, arg, where)
                except ValueError:
                    pass
        raise bad
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad
            return tuple(check_value(v, a, where) for v, a in zip(value, args))
        inner = args[0] if args else Any
        items = [check_value(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def parse_value(text: str, tp: Any, where: str) -> Any:
    """A command-line string as type `tp`: true/false for booleans, Python/TOML literals for lists."""
    origin = typing.get_origin(tp)
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: expected true or false, got {text!r}")
    if tp is str:
        return text
    if tp is dict or origin is dict:  # a table on the command line: JSON ('{"enable_thinking": false}')
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{where}: expected a JSON object, got {text!r} ({e})") from None
        return check_value(value, tp, where)
    if tp is int or tp is float or origin in (list, tuple, typing.Union, types.UnionType):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        return check_value(value, tp, where)
    return text


def _split_overrides(overrides: list[str]) -> list[tuple[str, str, str]]:
    """["--section.key", "value", "--a.b=c", ...] -> [(flag, "section.key", value)]."""
    items, out = list(overrides), []
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or "." not in flag:
            raise ValueError(f"override {flag!r}: expected --section.key value")
        if "=" in flag:
            flag, value = flag.split("=", 1)
        elif items:
            value = items.pop(0)
        else:
            raise ValueError(f"override {flag}: missing value")
        out.append((flag, flag[2:].replace("-", "_"), value))
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """TOML file (optional) + ["--section.key", "value", ...] overrides -> `cls(...)`, every value type-checked."""
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"{path}: cannot read config ({e})") from e
    sections = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for flag, dotted, value in _split_overrides(overrides or []):
        section, _, key = dotted.partition(".")
        if dotted in MOVED:
            raise ValueError(f"override {flag}: moved to --{MOVED[dotted]}")
        if section not in sections or key not in _field_types(hints[section]):
            raise ValueError(f"override {flag}: unknown setting")
        raw.setdefault(section, {})[key] = parse_value(value, _field_types(hints[section])[key], dotted)
    unknown_sections = sorted(set(raw) - set(sections))
    if unknown_sections:
        raise ValueError(f"config: unknown sections {unknown_sections}")
    built = {}
    for name in sections:
        sub = raw.get(name, {})
        if not isinstance(sub, dict):
            raise ValueError(f"[{name}]: expected a section of settings, got {sub!r}")
        types_ = _field_types(hints[name])
        for key in sub:
            if f"{name}.{key}" in MOVED:
                raise ValueError(f"[{name}] {key}: moved to {MOVED[f'{name}.{key}']}")
        unknown = sorted(set(sub) - set(types_))
        if unknown:
            raise ValueError(f"[{name}]: unknown settings {unknown}")
        checked = {k: check_value(v, types_[k], f"{name}.{k}") for k, v in sub.items()}
        # every section field is declared with field(default_factory=...); dataclasses types it as maybe-MISSING
        default = cast(Callable[[], Any], sections[name].default_factory)()
        built[name] = dataclasses.replace(default, **checked) if checked else default
    return cls(**built)


def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls) if f.init}
