"""The `nemoh` command line, run as a real subprocess."""
import json
import subprocess
import sys

import pytest
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
    from transformers import AutoTokenizer
    from transformers import NemotronHForCausalLM as Ref
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


def _run_main(capsys, *argv):
    """The CLI entry point in this process (fast): (exit status, stderr)."""
    from nemoh.cli.main import main
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    """Paths, devices and unreadable data: one line naming the setting or file, exit 2, no traceback."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    run = ["sft", "--train.steps", "1", "--data.eval", "", "--quiet"]
    cases = {
        "checkpoint.dir: " + str(a_file) + " is a file": ["--checkpoint.dir", str(a_file)],
        str(tmp_path) + ": is a directory": ["--checkpoint.dir", str(tmp_path / "r1"), "--data.train", str(tmp_path)],
    }
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    bad.write_bytes(good.encode() + b"\n" + b'{"messages": "\xff\xfe"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    cases["bad.jsonl: skipped 2 of 3 rows"] = ["--checkpoint.dir", str(tmp_path / "r2"), "--data.train", str(bad)]
    if not torch.cuda.is_available():
        cases["device: 'cuda' asked for, but CUDA is not available"] = [
            "--checkpoint.dir", str(tmp_path / "r3"), "--model.device", "cuda"]
    for needle, extra in cases.items():
        rc, err = _run_main(capsys, *run, *extra)
        assert rc == 2 and needle in err and "Traceback" not in err, (needle, err)
        assert err.strip().splitlines()[-1].startswith("nemoh sft: error: "), err
    # the skipped rows were reported with file:line and reason on the way
    rc, err = _run_main(capsys, *run, *cases["bad.jsonl: skipped 2 of 3 rows"])
    assert "bad.jsonl:line 2: not valid UTF-8" in err and "bad.jsonl:line 3: not valid JSON (nested too deeply)" in err


def test_corrupt_checkpoint_in_serve_and_debug_traceback(tmp_path, capsys):
    from nemoh.cli.main import main
    from nemoh.cli.model_cmds import init_tiny
    weights = init_tiny(tmp_path / "tiny") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # a truncated download
    r = nemoh("serve", str(tmp_path / "tiny"), "--port", "1")  # the real command line, as a user runs it
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"nemoh serve: error: {weights}: not a readable safetensors file (")
    with pytest.raises(ValueError, match="not a readable safetensors file"):  # --debug: the exception propagates
        main(["--debug", "generate", str(tmp_path / "tiny"), "hi"])


def test_info_on_a_config_only_folder_shows_total_and_active_parameters(tmp_path, capsys):
    from nemoh.model.presets import get_preset
    (tmp_path / "config.json").write_text(json.dumps(get_preset("nano-30b-a3b").to_dict()))
    from nemoh.cli.main import main
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 6 of 128 routed experts active: NVIDIA's "30B-A3B" (31.6B total, 3.6B active with the embeddings)
    assert "31.58 B total, 3.58 B active per token" in out.replace("\n", " ")
