"""Tool calls in the qwen3_coder XML form that Nemotron-3 emits, parsed into OpenAI `tool_calls`.

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Arguments become valid JSON: by the tool's JSON schema where the request gave one (string stays string, numbers
become numbers, booleans true/false), else by reading the value as JSON. Python spellings the reference template
produces (True/False/None) are read as true/false/null, so they never leak through. Arguments are strict JSON:
a value that would need NaN/Infinity, or nests too deep to read, stays the string the model wrote. Any schema shape
(validated or not) is read defensively: the parser never raises on what a request or the model carries.
"""
from __future__ import annotations

import ast
import json
import math
import re
import uuid
from typing import Any

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
FUNCTION_RE = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.DOTALL)
PARAM_RE = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)
PY_LITERALS = {"True": True, "False": False, "None": None}


def call_opening(name: str | None) -> str:
    """The start of a tool call in this format, up to and including the function's name when one is given. The
    server writes it into the assistant turn to enforce tool_choice (nemoh has no constrained decoding, where vLLM
    uses guided JSON): a named function gets its full opening and the model writes the arguments; "required" gets
    the opening up to the name and the model picks the function."""
    return "<tool_call>\n<function=" + (f"{name}>\n" if name else "")


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _schema_types(tools: list[dict] | None, name: str) -> dict[str, Any]:
    for tool in tools or []:
        f = _dict(_dict(tool).get("function", tool))
        if f.get("name") == name:
            return _dict(_dict(f.get("parameters")).get("properties"))
    return {}


def _finite(value: Any, depth: int = 0) -> bool:
    """True when `value` dumps as strict JSON: no NaN/Infinity anywhere, nesting json.loads can read back."""
    if depth > 100:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _finite(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_finite(v, depth + 1) for v in value)
    return value is None or isinstance(value, (str, int, bool))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def convert_value(raw: str, schema: dict[str, Any] | None) -> Any:
    """The parameter text as a JSON value typed by its schema; the text itself when no reading is strict JSON."""
    text = raw.removeprefix("\n").removesuffix("\n")
    value = _read(text, _dict(schema).get("type"))
    return value if _finite(value) else text


def _read(text: str, kind: Any) -> Any:
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    kind = kind if isinstance(kind, str) else None
    if kind == "string":
        return text
    stripped = text.strip()
    if stripped in PY_LITERALS:
        return PY_LITERALS[stripped]
    if kind == "boolean":
        return stripped.lower() == "true"
    if kind == "integer":
        try:
            return int(stripped)
        except ValueError:
            pass
    if kind == "number":
        try:
            f = float(stripped)
            return int(f) if f.is_integer() and "." not in stripped and "e" not in stripped.lower() else f
        except ValueError:
            pass
    try:
        return json.loads(stripped, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not JSON, NaN/Infinity, too deep
        pass
    if kind in ("object", "array") and len(stripped) < 100_000:
        try:
            return ast.literal_eval(stripped)  # Python-style dict/list with True/False/None
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def parse_tool_calls(text: str, tools: list[dict] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Split model output into (content before the first <tool_call>, OpenAI tool_calls list)."""
    start = text.find("<tool_call>")
    if start < 0:
        return text, []
    content = text[:start].rstrip()
    calls = []
    for block in TOOL_CALL_RE.findall(text[start:]):
        for name, body in FUNCTION_RE.findall(block):
            name = name.strip()
            props = _schema_types(tools, name)
            args = {k.strip(): convert_value(v, props.get(k.strip())) for k, v in PARAM_RE.findall(body)}
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False,
                                                                             allow_nan=False)}})
    return content, calls
