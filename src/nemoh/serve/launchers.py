"""Command lines for serving with vLLM or SGLang: the flags Nemotron-3 needs, built from its config.json."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..model.config import NemotronHConfig


def _is_fp8(path: Path, config: NemotronHConfig) -> bool:
    q = config.extra.get("quantization_config") or {}
    hf_quant = path / "hf_quant_config.json"
    algo = str(q.get("quant_algo") or q.get("quant_method") or "")
    if hf_quant.exists():
        algo += json.dumps(json.loads(hf_quant.read_text()))
    return "fp8" in algo.lower()


def vllm_command(path: Path, config: NemotronHConfig, host: str, port: int, name: str, tp: int,
                 max_model_len: int | None, rl: bool = False) -> tuple[list[str], dict[str, str]]:
    cmd = ["vllm", "serve", str(path), "--host", host, "--port", str(port), "--served-model-name", name,
           "--trust-remote-code", "--async-scheduling", "--tensor-parallel-size", str(tp),
           # vLLM defaults the Mamba SSM cache to bf16, which costs accuracy; keep the state fp32
           "--mamba-ssm-cache-dtype", "float32",
           "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder"]
    plugin = path / "nano_v3_reasoning_parser.py"  # shipped with the checkpoint; vLLM loads it as a plugin
    if plugin.exists():
        cmd += ["--reasoning-parser-plugin", str(plugin)]
    cmd += ["--reasoning-parser", "nano_v3"]
    env: dict[str, str] = {}
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if _is_fp8(path, config):
        cmd += ["--kv-cache-dtype", "fp8"]
        env.update({"VLLM_USE_FLASHINFER_MOE_FP8": "1", "VLLM_FLASHINFER_MOE_BACKEND": "throughput"})
    if "moe" in config.block_types and tp > 1:
        cmd += ["--enable-expert-parallel"]
    if rl:      # rollouts for nemoh rl: routed experts per token (R3) and the weight-transfer endpoints (dev mode)
        cmd += ["--enable-return-routed-experts"]
        env["VLLM_SERVER_DEV_MODE"] = "1"
    return cmd, env


def sglang_command(path: Path, config: NemotronHConfig, host: str, port: int, name: str, tp: int,
                   max_model_len: int | None, rl: bool = False) -> tuple[list[str], dict[str, str]]:
    cmd = ["python", "-m", "sglang.launch_server", "--model-path", str(path), "--host", host, "--port", str(port),
           "--served-model-name", name, "--trust-remote-code", "--tp-size", str(tp),
           "--mamba-ssm-dtype", "float32", "--tool-call-parser", "qwen3_coder",
           "--reasoning-parser", "nemotron_3"]     # SGLang's parser for Nemotron-3's <think> (enable_thinking)
    if max_model_len:
        cmd += ["--context-length", str(max_model_len)]
    if _is_fp8(path, config):
        cmd += ["--kv-cache-dtype", "fp8_e4m3"]
    if "moe" in config.block_types and tp > 1:
        cmd += ["--ep-size", str(tp)]
    if rl:      # rollouts for nemoh rl: routed experts per token over all layers (R3)
        cmd += ["--enable-return-routed-experts"]
    return cmd, {}


LAUNCHERS: dict[str, Callable[..., tuple[list[str], dict[str, str]]]] = {"vllm": vllm_command, "sglang": sglang_command}


def build_command(engine: str, path: str | Path, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
                  tensor_parallel_size: int = 1, max_model_len: int | None = None,
                  rl: bool = False) -> tuple[list[str], dict[str, str]]:
    if engine not in LAUNCHERS:
        raise ValueError(f"--engine: unknown {engine!r}; choose one of {sorted(LAUNCHERS)} or 'nemoh'")
    path = Path(path)
    config = NemotronHConfig.from_pretrained(path)
    if config.num_attention_heads % tensor_parallel_size:
        raise ValueError(f"--tensor-parallel-size: {tensor_parallel_size} does not divide "
                         f"num_attention_heads={config.num_attention_heads}")
    return LAUNCHERS[engine](path, config, host, port, name or path.name, tensor_parallel_size, max_model_len, rl)
