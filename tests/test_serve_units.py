"""Tool-call parsing on hand-written model outputs, and the vLLM/SGLang command lines."""
import json

import pytest

from nemoh.model.tiny import init_tiny
from nemoh.serve import build_command, parse_tool_calls

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "s": {"type": "string"}, "i": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
    "o": {"type": "object"}, "a": {"type": "array"}}}}}]


def test_parse_typed_arguments():
    text = ("Let me check.\n<tool_call>\n<function=f>\n<parameter=s>\n42\n</parameter>\n<parameter=i>\n7\n</parameter>\n"
            "<parameter=x>\n2.5\n</parameter>\n<parameter=b>\nFalse\n</parameter>\n"
            "<parameter=o>\n{'k': True, 'n': None}\n</parameter>\n<parameter=a>\n[1, 2]\n</parameter>\n</function>\n</tool_call>")
    content, calls = parse_tool_calls(text, TOOLS)
    assert content == "Let me check."
    args = json.loads(calls[0]["function"]["arguments"])
    assert args == {"s": "42", "i": 7, "x": 2.5, "b": False, "o": {"k": True, "n": None}, "a": [1, 2]}
    assert "False" not in calls[0]["function"]["arguments"] and calls[0]["type"] == "function"


def test_parse_without_schema_and_several_calls():
    text = ("<tool_call>\n<function=g>\n<parameter=flag>\nTrue\n</parameter>\n<parameter=n>\n3\n</parameter>\n"
            "<parameter=name>\nmulti\nline\n</parameter>\n</function>\n</tool_call>\n"
            "<tool_call>\n<function=h>\n</function>\n</tool_call>")
    content, calls = parse_tool_calls(text)
    assert content == "" and [c["function"]["name"] for c in calls] == ["g", "h"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"flag": True, "n": 3, "name": "multi\nline"}
    assert json.loads(calls[1]["function"]["arguments"]) == {}
    assert parse_tool_calls("no tools here") == ("no tools here", [])


def test_truncated_call_still_parses():
    content, calls = parse_tool_calls("<tool_call>\n<function=f>\n<parameter=i>\n5", TOOLS)
    assert json.loads(calls[0]["function"]["arguments"]) == {"i": 5}


def test_launcher_commands(tmp_path):
    init_tiny(tmp_path / "m")
    cmd, env = build_command("vllm", tmp_path / "m", port=9000, name="nem", tensor_parallel_size=2)
    line = " ".join(cmd)
    for flag in ("--trust-remote-code", "--mamba-ssm-cache-dtype float32", "--tool-call-parser qwen3_coder",
                 "--reasoning-parser nano_v3", "--tensor-parallel-size 2", "--served-model-name nem", "--port 9000",
                 "--enable-expert-parallel"):
        assert flag in line
    assert "--kv-cache-dtype" not in line and env == {}
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    cmd, env = build_command("vllm", tmp_path / "m")
    assert "--kv-cache-dtype fp8" in " ".join(cmd) and env["VLLM_USE_FLASHINFER_MOE_FP8"] == "1"
    cmd, _ = build_command("sglang", tmp_path / "m", tensor_parallel_size=2)
    line = " ".join(cmd)
    assert "sglang.launch_server" in line and "--tp-size 2" in line and "--mamba-ssm-dtype float32" in line
    assert "--kv-cache-dtype fp8_e4m3" in line
    with pytest.raises(ValueError, match="tensor-parallel-size"):
        build_command("vllm", tmp_path / "m", tensor_parallel_size=3)
    with pytest.raises(ValueError, match="--engine"):
        build_command("tgi", tmp_path / "m")
