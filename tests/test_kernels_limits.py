"""Honest limits: a problem too big for the sandbox is `does_not_fit` (not the candidate's fault), `--shrink` makes
it checkable, the CPU limit follows `--timeout` or `--cpu-seconds`, and the CLI's clear / export messages."""
import json

import pytest

from nemoh.cli.main import main as cli
from nemoh.kernels import SandboxConfig, read_verdicts, score, verify_code
from nemoh.kernels.problems import DATA

# 16384 x 65536 float32 = 4 GiB of input: over a 3 GiB address-space limit before the reference even runs
BIG = """import torch
import torch.nn as nn
M = 16384
K = 65536


class Model(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def get_inputs():
    return [torch.randn(M, K)]


def get_init_inputs():
    return []
"""
SILU = (DATA / "solutions" / "1_SiLU.py").read_text()


def test_too_big_is_does_not_fit_and_shrink_checks_it(tmp_path):
    v = verify_code(BIG, SILU, "big", cfg=SandboxConfig(timeout_s=60, mem_gb=3))
    assert v.failure == "does_not_fit" and "memory" in v.detail and not v.correct and score(v) == 0.0
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"problem": "big", "sample": 0, "problem_code": BIG, "code": SILU}) + "\n")
    assert cli(["kernels", "verify", str(traces), "--shrink", "256", "--mem-gb", "3", "--timeout", "60",
                "--cpu-seconds", "50", "--quiet"]) == 0
    (v,) = read_verdicts(tmp_path / "t.verdicts.jsonl")
    assert v.correct, v.detail
    assert v.shrink == {"factor": 256, "changed": {"M": [16384, 64], "K": [65536, 256]}}


def test_cpu_seconds_limit(tmp_path):
    spin = "import torch.nn as nn\nclass ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
           "        while True:\n            pass\n"
    problem = (DATA / "problems" / "1_SiLU.py").read_text()
    v = verify_code(problem, spin, "spin", cfg=SandboxConfig(timeout_s=120, cpu_s=4))
    assert v.failure == "timeout" and "CPU-time" in v.detail and v.seconds < 100


def test_clear_and_export_messages(tmp_path, capsys):
    from nemoh.kernels import Verdict
    verdicts = tmp_path / "v.jsonl"
    pending = Verdict("nemoh/1_SiLU", 0, correct=True, mode="gpu", speedup_eager=50.0, speed_review="pending")
    verdicts.write_text(json.dumps(pending.to_dict()) + "\n")
    assert score(pending) == 1.0
    assert cli(["kernels", "clear", str(verdicts), "--problem", "nemoh/1_SiLU"]) == 0
    (v,) = read_verdicts(verdicts)
    assert v.speed_review == "cleared" and score(v) == 1.5
    assert cli(["kernels", "clear", str(verdicts), "--problem", "nemoh/1_SiLU"]) == 2   # nothing pending: one line
    assert "no speedup waiting for review" in capsys.readouterr().err
    traces = tmp_path / "t.jsonl"
    problem = (DATA / "problems" / "1_SiLU.py").read_text()
    traces.write_text(json.dumps({"problem": "nemoh/1_SiLU", "sample": 0, "problem_code": problem,
                                  "code": SILU}) + "\n")
    verdicts.write_text(json.dumps(Verdict("nemoh/1_SiLU", 0, correct=True).to_dict()) + "\n")
    assert cli(["kernels", "export", str(traces), "--verdicts", str(verdicts), "--out", str(tmp_path / "d.jsonl"),
                "--min-speedup", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "wrote 0" in out and "no GPU timing" in out
    assert cli(["kernels", "export", str(traces), "--verdicts", str(verdicts), "--out", str(tmp_path / "d.jsonl")]) == 0
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 1    # a minimal trace (no prompt) exports


@pytest.mark.slow
def test_reference_too_slow_is_does_not_fit():
    slow = BIG.replace("M = 16384\nK = 65536", "M = 4\nK = 4").replace(
        "        return x * torch.sigmoid(x)", "        import time\n        time.sleep(600)\n        return x")
    v = verify_code(slow, SILU, "slow", cfg=SandboxConfig(timeout_s=8))
    assert v.failure == "does_not_fit" and "longer than 8 s" in v.detail and v.seconds < 60
