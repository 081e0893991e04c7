"""KernelBench pipeline: the verifier passes every shipped solution and rejects every known cheat with the right
failure class (real sandboxed subprocesses, the Triton interpreter on CPU); the pipeline runs end to end against
a live `nemoh serve`; the dataset feeds SFT; the reward scores; the report's estimators are right."""
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from net import free_port, send_json

from nemoh.cli.main import main as cli
from nemoh.kernels import (
    GenerateConfig,
    SandboxConfig,
    generate,
    kernelbench_reward,
    load_problems,
    pass_at_k,
    read_verdicts,
    summarize,
    verify_traces,
)
from nemoh.kernels.problems import DATA
from nemoh.kernels.prompts import extract_code, split_reasoning


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Every shipped solution and cheat through `nemoh kernels examples --cheats` + `verify`."""
    d = tmp_path_factory.mktemp("judged")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    got = []

    def accept():
        try:
            while True:
                try:
                    got.append(listener.accept())
                except TimeoutError:
                    if stop.is_set():
                        return
        except OSError:
            return
    stop = threading.Event()
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    assert cli(["kernels", "examples", "--out", str(d / "ex.jsonl"), "--cheats"]) == 0
    rows = [json.loads(l) for l in (d / "ex.jsonl").read_text().splitlines()]
    for r in rows:  # aim the network cheat at our listener
        r["code"] = r["code"].replace('int(os.environ.get("NEMOH_TEST_PORT", "9"))', str(listener.getsockname()[1]))
    (d / "ex.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    verdicts = verify_traces(d / "ex.jsonl", d / "ex.verdicts.jsonl", SandboxConfig(timeout_s=60), workers=2,
                             progress=False)
    stop.set()
    t.join()
    listener.close()
    expect = {json.loads(l)["problem"]: json.loads(l)["expect"] for l in (d / "ex.jsonl").read_text().splitlines()}
    return d, {v.problem: v for v in verdicts}, expect, got


@pytest.mark.slow
def test_every_shipped_solution_passes(judged):
    _, verdicts, expect, _ = judged
    # the shipped solutions; `problem~cheat` entries expected "correct" pass with a flag and are checked elsewhere
    solutions = [p for p, e in expect.items() if e == "correct" and "~" not in p]
    assert len(solutions) >= 10
    for p in solutions:
        v = verdicts[p]
        assert v.correct and v.failure is None and v.launches >= 1 and not v.flags, (p, v.detail, v.flags)
        # relative, not absolute: the x8 input trials scale a matmul's outputs by 64 (its absolute fp32 error with
        # them, 1.2e-3 measured); a correct fp32 kernel differs from eager only by summation order (~1e-7 relative)
        assert v.rel_l2_err is not None and v.rel_l2_err < 1e-5 and v.mode == "interpret", (p, v.rel_l2_err)


@pytest.mark.slow
def test_every_known_cheat_is_rejected_with_its_class(judged):
    _, verdicts, expect, got = judged
    cheats = {p: e for p, e in expect.items() if "~" in p}
    assert len(cheats) >= 24
    wrong = {p: (verdicts[p].failure, verdicts[p].detail[:120]) for p, e in cheats.items()
             if (verdicts[p].failure or "correct") != e}
    assert not wrong, wrong
    assert not got                                            # nothing reached the listening socket
    assert "torch ops" in verdicts["nemoh/1_SiLU~torch_op"].detail
    assert "no Triton kernel launched" in verdicts["nemoh/1_SiLU~kernel_never_launched"].detail
    assert "try/except" in verdicts["nemoh/1_SiLU~try_except_fallback"].detail
    assert "mutates its input" in verdicts["nemoh/1_SiLU~mutates_input"].detail
    assert "SIGSEGV" in verdicts["nemoh/1_SiLU~out_of_bounds_store"].detail
    assert "rebinds time.perf_counter" in verdicts["nemoh/1_SiLU~patches_timer"].detail
    assert "not written by a Triton kernel" in verdicts["nemoh/1_SiLU~cached_output"].detail
    assert "imports from triton.runtime.build" in verdicts["nemoh/1_SiLU~triton_build_helper"].detail


@pytest.mark.parametrize("case,expected", [
    ("def (:\n", "syntax_or_import_error"),
    ("import torch.not_a_real_module\n", "syntax_or_import_error"),
    ("import not_a_real_package\n", "integrity_violation"),     # outside the import allow-list
    ("import torch\nclass Foo: pass\n", "missing_model_new"),
    ("tl.arange(0, 1000)", "triton_compile_error"),          # not a power of 2: the compiler's own check
    ("tl.no_such_fn(x)", "triton_compile_error"),
    ("return out.view(-1)", "shape_mismatch"),
    ("x * tl.sigmoid(x) * 1.001", "numeric_mismatch"),
])
def test_failure_taxonomy(case, expected):
    from nemoh.kernels import verify_code
    sol = (DATA / "solutions" / "1_SiLU.py").read_text()
    edits = {"tl.arange(0, 1000)": ("tl.arange(0, BLOCK)", case), "tl.no_such_fn(x)": ("tl.sigmoid(x)", case),
             "return out.view(-1)": ("return out", case), "x * tl.sigmoid(x) * 1.001": ("x * tl.sigmoid(x)", case)}
    code = sol.replace(*edits[case]) if case in edits else case
    v = verify_code((DATA / "problems" / "1_SiLU.py").read_text(), code, "case")
    assert v.failure == expected and not v.correct, (v.failure, v.detail)


def test_write_outside_the_sandbox_leaves_no_file(tmp_path):
    target = tmp_path / "escape.txt"
    code = (DATA / "cheats" / "writes_outside_tmp.py").read_text().replace(
        'os.environ.get("NEMOH_ESCAPE_PATH", "/tmp/nemoh-escape.txt")', repr(str(target)))
    from nemoh.kernels import verify_code
    problem = (DATA / "problems" / "1_SiLU.py").read_text()
    v = verify_code(problem, code, "escape")                       # the static rules stop it before it runs
    assert v.failure == "integrity_violation" and "imports os" in v.detail and not target.exists()
    v = verify_code(problem, code, "escape", cfg=SandboxConfig(static_rules=False))   # and so does the audit hook
    assert v.failure == "integrity_violation" and str(target) in v.detail and not target.exists()


@pytest.mark.slow
def test_report_funnel_and_export(judged, tmp_path):
    d, verdicts, expect, _ = judged
    summary = summarize(list(verdicts.values()))
    n_ok = sum(e == "correct" for e in expect.values())
    n_clean = n_ok - sum(1 for p, e in expect.items() if e == "correct" and "~" in p)   # flagged ones stay out
    assert summary["funnel"]["samples"] == len(expect) and summary["funnel"]["correct"] == n_ok
    assert summary["fast"]["fast_0"] == pytest.approx(n_ok / len(expect)) and summary["fast"]["fast_1"] is None
    assert summary["failures"]["integrity_violation"] >= 8 and summary["failures"]["timeout"] == 1
    assert cli(["kernels", "report", str(d / "ex.verdicts.jsonl"), "--png", str(tmp_path / "r.png"),
                "--json", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000 and json.loads((tmp_path / "s.json").read_text())["funnel"]
    out = tmp_path / "ds.jsonl"
    assert cli(["kernels", "export", str(d / "ex.jsonl"), "--out", str(out)]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == n_clean                                # cheats never make it into the dataset
    assert all(r["provenance"]["sha256"] and r["messages"][1]["role"] == "assistant" for r in rows)
    # GPU-timed speedups are required for --min-speedup > 0: none on a CPU
    assert cli(["kernels", "export", str(d / "ex.jsonl"), "--out", str(tmp_path / "fast.jsonl"),
                "--min-speedup", "1.0"]) == 0
    assert (tmp_path / "fast.jsonl").read_text() == ""
    # the SFT trainer reads it as it is
    from nemoh.data import ErrorLog, load_chat_examples, read_rows
    from nemoh.model.tiny import init_tiny
    from nemoh.tokenizer import Tokenizer
    init_tiny(tmp_path / "tiny", "tiny")
    tok = Tokenizer.from_pretrained(tmp_path / "tiny")
    errors = ErrorLog("raise")
    examples = load_chat_examples(list(read_rows(out, errors)), tok, errors)
    assert len(examples) == n_clean and all(sum(e.loss_mask) > 0 for e in examples)
    # and fine-tunes on it: one SFT step on the verified traces
    run = tmp_path / "sft"
    assert cli(["sft", "--checkpoint.dir", str(run), "--data.train", str(out), "--data.eval", "",
                "--data.seq_len", "4096", "--data.rows_per_step", "1", "--train.steps", "1", "--quiet",
                "--train.eval_every", "0"]) == 0
    assert (run / "final" / "model.safetensors").exists()


def test_rl_with_the_kernelbench_reward(tmp_path):
    """`nemoh kernels prompts` -> `nemoh rl --reward.function kernelbench`: the tiny model writes no kernels, so every
    sample is verified as no_code and scores 0, and nothing counts as a reward failure."""
    prompts = tmp_path / "prompts.jsonl"
    assert cli(["kernels", "prompts", "--out", str(prompts)]) == 0
    rows = [json.loads(l) for l in prompts.read_text().splitlines()]
    assert len(rows) == 10 and all("class Model" in r["label"] and "{problem_code}" not in r["prompt"] for r in rows)
    run = tmp_path / "rl"
    assert cli(["rl", "--checkpoint.dir", str(run), "--data.prompts", str(prompts), "--reward.function", "kernelbench",
                "--rollout-max-prompt-len", "4096", "--rollout.rollout_max_response_len", "8",
                "--rollout.n_samples_per_prompt", "2", "--rollout.rollout_batch_size", "2",
                "--train.global_batch_size", "4", "--train.micro_batch_size", "2", "--train.rollouts", "1",
                "--warm_start.steps", "0", "--train.eval_every", "0", "--quiet"]) == 0
    from nemoh.train.metrics import read_metrics
    (last,) = [r for r in read_metrics(run) if "reward_mean" in r]
    assert last["reward_mean"] == 0.0 and last["reward_failures"] == 0


def test_kernelbench_reward_shapes_verdicts():
    sol = (DATA / "solutions" / "1_SiLU.py").read_text()
    cheat = (DATA / "cheats" / "torch_op.py").read_text()
    responses = [f"<think>a row-wise kernel</think>Here:\n```python\n{sol}```",
                 f"```python\n{cheat}```", "I cannot do that."]
    assert kernelbench_reward(responses, "1_SiLU") == [1.0, -1.0, 0.0]
    from nemoh.rl.rewards import RewardFn
    fn = RewardFn("kernelbench")
    assert fn.per_group and fn(responses[2:], "nemoh/1_SiLU") == [0.0]


def test_extraction_and_pass_at_k():
    text = "<think>try ```python\nwrong```</think>Answer:\n```python\nfirst\n```\nbetter:\n```py\nlast\n```"
    reasoning, answer = split_reasoning(text)
    assert "wrong" in reasoning and extract_code(answer) == "last\n"
    assert extract_code("no code here") is None
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3) and pass_at_k(4, 1, 2) == pytest.approx(0.5)


def test_problem_loaders(tmp_path):
    kb = tmp_path / "KernelBench"
    (kb / "level1").mkdir(parents=True)
    (kb / "level2").mkdir()
    silu = (DATA / "problems" / "1_SiLU.py").read_text()
    (kb / "level1" / "1_SiLU.py").write_text(silu)
    (kb / "level1" / "10_Softmax.py").write_text((DATA / "problems" / "2_Softmax_rows.py").read_text())
    (kb / "level2" / "3_Other.py").write_text(silu)
    names = [p.name for p in load_problems(str(kb))]
    assert names == ["level1/1_SiLU", "level1/10_Softmax", "level2/3_Other"]
    assert [p.name for p in load_problems(f"{kb}@level2")] == ["level2/3_Other"]
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"code": silu, "name": "silu", "level": "mine", "problem_id": 7}) + "\n")
    (p,) = load_problems(str(table))
    assert (p.name, p.problem_id) == ("mine/silu", 7)
    assert len(load_problems("builtin")) == 10
    (kb / "level1" / "2_Broken.py").write_text("import torch\nclass Model: pass\n")
    with pytest.raises(ValueError, match="2_Broken.py: not a KernelBench problem, missing get_inputs"):
        load_problems(str(kb))


class _Flaky(BaseHTTPRequestHandler):
    """An OpenAI-style endpoint that fails the first two requests with 503, then answers with a solution."""
    calls = 0

    def do_POST(self):
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).calls <= 2:
            self.send_response(503)
            self.end_headers()
            return
        sol = (DATA / "solutions" / "1_SiLU.py").read_text()
        reply = {"choices": [{"message": {"role": "assistant", "content": f"```python\n{sol}```",
                                          "reasoning_content": f"think at T={body['temperature']}"},
                              "finish_reason": "stop"}], "usage": {"completion_tokens": 5}}
        send_json(self, reply)

    def log_message(self, *args):
        pass


def test_generate_retries_and_resumes(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        problems = [p for p in load_problems("builtin") if p.stem == "1_SiLU"]
        cfg = GenerateConfig(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", samples=2, concurrency=1,
                             retries=3, temperature=0.3)
        out = tmp_path / "traces.jsonl"
        stats = generate(problems, out, cfg, "{problem_code}", progress=False)
        assert stats == {"requested": 2, "skipped": 0, "errors": 0} and _Flaky.calls == 4
        rows = [json.loads(l) for l in out.read_text().splitlines()]
        assert all(r["code"] and "silu_kernel" in r["code"] and r["reasoning"] == "think at T=0.3" for r in rows)
        with out.open("a") as f:
            f.write('{"problem": "nemoh/1_SiL')             # a line cut by a killed run
        stats = generate(problems, out, cfg, "{problem_code}", progress=False)
        assert stats["requested"] == 0 and stats["skipped"] == 2 and _Flaky.calls == 4
    finally:
        srv.shutdown()


def test_end_to_end_against_nemoh_serve(tmp_path):
    """serve the tiny model -> generate -> verify -> report -> export: its kernels fail, the verdicts say so and the
    dataset is valid and empty."""
    assert cli(["init-tiny", str(tmp_path / "tiny")]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nemoh.cli.main", "serve", str(tmp_path / "tiny"), "--port",
                             str(port), "--served-model-name", "tiny", "--max-model-len", "4096"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        traces = tmp_path / "traces.jsonl"
        assert cli(["kernels", "generate", "--problems", "builtin", "--base-url", f"http://127.0.0.1:{port}/v1",
                    "--model", "tiny", "-n", "2", "--max-tokens", "16", "--out", str(traces), "--quiet"]) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    rows = [json.loads(l) for l in traces.read_text().splitlines()]
    assert len(rows) == 20 and all(not r["error"] and r["usage"] for r in rows)
    assert cli(["kernels", "verify", str(traces), "--quiet"]) == 0
    verdicts = read_verdicts(tmp_path / "traces.verdicts.jsonl")
    assert len(verdicts) == 20 and all(v.failure == "no_code" and not v.correct for v in verdicts)
    assert cli(["kernels", "report", str(tmp_path / "traces.verdicts.jsonl")]) == 0
    assert cli(["kernels", "export", str(traces), "--out", str(tmp_path / "ds.jsonl")]) == 0
    assert (tmp_path / "ds.jsonl").exists() and (tmp_path / "ds.jsonl").read_text() == ""
