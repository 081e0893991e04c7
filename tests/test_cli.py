"""The `nemoh` command line, run as a real subprocess."""
import json
import subprocess
import sys

import torch

from nemoh import NemotronHForCausalLM


def nemoh(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nemoh.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_demo_runs_end_to_end(tmp_path):
    r = nemoh("demo", "--out", str(tmp_path / "tiny"), "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    for step in ("1. wrote", "2. loaded", "3. forward", "4. greedy"):
        assert step in r.stdout
    files = {p.name for p in (tmp_path / "tiny").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files


def test_init_tiny_checkpoint_loads_in_transformers(tmp_path):
    r = nemoh("init-tiny", str(tmp_path / "tiny"))
    assert r.returncode == 0, r.stderr
    from transformers import AutoTokenizer, NemotronHForCausalLM as Ref
    ref = Ref.from_pretrained(tmp_path / "tiny", dtype=torch.float32).eval()
    ours = NemotronHForCausalLM.from_pretrained(tmp_path / "tiny", dtype=torch.float32, mamba_dt_clamp=True)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think></think>")
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max() < 1e-4
    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert cfg["eos_token_id"] == [2, tok.convert_tokens_to_ids("<|im_end|>")]


def test_info_and_bad_input(tmp_path):
    r = nemoh("info", str(tmp_path))
    assert r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.json").write_text(json.dumps({"hybrid_override_pattern": "M*Z"}))
    r = nemoh("info", str(tmp_path))
    assert r.returncode == 2 and "hybrid_override_pattern" in r.stderr
    r = nemoh("presets")
    assert r.returncode == 0 and "super-120b-a12b" in r.stdout


def test_generate_and_chat(tmp_path):
    init = nemoh("init-tiny", str(tmp_path / "tiny"))
    assert init.returncode == 0, init.stderr
    r = nemoh("generate", str(tmp_path / "tiny"), "Hello", "--max-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert "5 tokens, finish_reason=length" in r.stdout
    chat = subprocess.run([sys.executable, "-m", "nemoh.cli.main", "chat", str(tmp_path / "tiny"), "--max-tokens", "6"],
                          input="hi\nagain\n", capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("> ") == 3  # two turns answered, then EOF at the third prompt
    dry = nemoh("serve", str(tmp_path / "tiny"), "--engine", "sglang", "--dry-run")
    assert dry.returncode == 0 and "sglang.launch_server" in dry.stdout
