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
produces (True/False/None) are read as true/false/null, so they never leak through.
"""
from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
FUNCTION_RE = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.S)
PARAM_RE = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.S)
PY_LITERALS = {"True": True, "False": False, "None": None}


def _schema_types(tools: list[dict] | None, name: str) -> dict[str, Any]:
    for tool in tools or []:
        f = tool.get("function", tool)
        if f.get("name") == name:
            return (f.get("parameters") or {}).get("properties") or {}
    return {}


def convert_value(raw: str, schema: dict[str, Any] | None) -> Any:
    text = raw[1:] if raw.startswith("\n") else raw
    text = text[:-1] if text.endswith("\n") else text
    kind = (schema or {}).get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
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
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    if kind in ("object", "array"):
        try:
            return ast.literal_eval(stripped)  # Python-style dict/list with True/False/None
        except (ValueError, SyntaxError):
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
                          "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})
    return content, calls
