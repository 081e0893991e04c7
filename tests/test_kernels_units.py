"""The verifier's parent-side pieces without a sandbox: the comparison, the shrink rule, the trial plan, the static
rules, the provenance monitor (in this process, launches simulated), the timing loop's checks, and what report,
reward and export do with the new verdict fields."""
import ast
import json
import math
from collections import Counter

import pytest
import torch

import nemoh.kernels.compare as cmp
from nemoh.kernels import SandboxConfig, Verdict, score, summarize
from nemoh.kernels.export import build_dataset
from nemoh.kernels.problems import DATA
from nemoh.kernels.rules import findings
from nemoh.kernels.shrink import shrink_problem
from nemoh.kernels.trials import plan


def test_constant_below_the_absolute_tolerance_fails_on_the_relative_norm():
    ref = torch.softmax(torch.rand(2, 65536), dim=-1)           # every value < 3e-5 < atol 1e-4
    c = cmp.compare(torch.zeros_like(ref), ref)
    assert c.failure == "numeric_mismatch" and "relative L2" in c.detail and c.rel_l2_err == pytest.approx(1.0)
    # honest fp32 rounding (one ulp-scale perturbation) passes both checks
    noisy = ref * (1 + 1e-7 * torch.randn_like(ref))
    assert cmp.compare(noisy, ref).failure is None


def test_tolerance_scales_with_the_output_and_specials_must_match():
    a, b = torch.randn(64, 256) * 8, torch.randn(256, 48) * 8
    ref = (a.double() @ b.double()).float()
    assert cmp.compare(a @ b, ref).failure is None              # fp32 matmul error at entries that cancel
    assert cmp.compare((a @ b) * 1.01, ref).failure == "numeric_mismatch"
    r = torch.tensor([float("nan"), float("inf"), 1.0])
    assert cmp.compare(r.clone(), r).failure is None
    assert cmp.compare(torch.tensor([0.0, float("inf"), 1.0]), r).failure == "numeric_mismatch"
    assert cmp.compare(torch.tensor([float("nan"), -float("inf"), 1.0]), r).failure == "numeric_mismatch"
    assert cmp.compare(torch.ones(3, 2), torch.ones(2, 3)).failure == "shape_mismatch"
    assert cmp.compare(torch.ones(2).double(), torch.ones(2)).failure == "shape_mismatch"
    assert cmp.compare((torch.ones(2),), (torch.ones(2), torch.ones(2))).failure == "shape_mismatch"
    assert cmp.compare(torch.arange(3), torch.tensor([0, 1, 3])).failure == "numeric_mismatch"


def test_comparison_works_in_chunks(monkeypatch):
    monkeypatch.setattr(cmp, "CHUNK", 7)                        # many chunks, one bad value in the last
    ref = torch.randn(100)
    out = ref.clone()
    out[-1] += 1
    c = cmp.compare(out, ref)
    assert c.failure == "numeric_mismatch" and c.detail.startswith("1 of 100")
    assert cmp.compare(ref.clone(), ref).failure is None


def test_shrink_rule():
    code = ("import torch\nM = 1024 * 2\nK = 4096\nN = M * 2\nkernel_size = 3\ndim = 1\nB = 16\nS = 40\n"
            "def get_inputs():\n    return [torch.randn(M, K)]\n")
    new, changed = shrink_problem(code, 8)
    assert changed == {"M": [2048, 256], "K": [4096, 512], "S": [40, 16]}   # S: 40 // 8 = 5 -> the floor 16
    ns = {}
    exec(new, ns)
    assert (ns["M"], ns["N"], ns["kernel_size"], ns["dim"], ns["B"]) == (256, 512, 3, 1, 16)
    assert shrink_problem(code, 1) == (code, {})
    with pytest.raises(ValueError, match="shrink"):
        shrink_problem(code, 0)


def test_trial_plan_and_config_validation():
    names = [t.name for t in plan(42, 2)]
    assert names == ["seed0", "seed1", "neg", "up", "down"]
    assert {t.seed for t in plan(42, 2)} == {43, 44}
    with pytest.raises(ValueError, match="transforms"):
        plan(0, 1, ("flip",))
    assert SandboxConfig(timeout_s=37.5).cpu_limit_s == 38      # the CPU limit follows --timeout
    assert SandboxConfig(timeout_s=30, cpu_s=90).cpu_limit_s == 90
    for bad in ({"timeout_s": 0}, {"cpu_s": -1}, {"shrink": 0}, {"device": "tpu"}, {"trials": 0}):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            SandboxConfig(**bad)


@pytest.mark.parametrize("src,what", [
    ("import numpy as np", "imports numpy"), ("import ctypes", "imports ctypes"), ("import os", "imports os"),
    ("from torch.utils._python_dispatch import x", "imports from torch.utils._python_dispatch"),
    ("from triton.runtime.build import compile_module_from_src", "imports from triton.runtime.build"),
    ("torch.utils.cpp_extension.load_inline('a', '')", "cpp_extension"),
    ("torch.allclose = f", "rebinds torch.allclose"), ("x = getattr(torch, 'a')", "uses getattr"),
    ("f = g.gi_frame.f_back", "uses .f_back"), ("t = x._base", "private attribute ._base"),
    ("y = x.__class__", "private attribute .__class__"), ("a = __builtins__", "uses __builtins__"),
    ("eval('1')", "uses eval"), ("y = torch.from_numpy(a)", "uses .from_numpy"),
    ("global q", "declares global"),
])
def test_static_rules_find(src, what):
    assert any(what in f for f in findings(ast.parse(src))), findings(ast.parse(src))


def test_static_rules_pass_every_shipped_solution():
    for f in sorted((DATA / "solutions").glob("*.py")):
        assert findings(ast.parse(f.read_text())) == [], f.name


def test_provenance_tracks_what_kernels_wrote():
    """The monitor's rules, with launches simulated: data fed to a kernel must come from inputs, kernels, allowed
    copies or blank memory; the output must be a kernel's."""
    from nemoh.kernels.provenance import Provenance, storage_bytes
    model = torch.nn.Linear(4, 4)
    x = torch.randn(3, 4)
    p = Provenance()
    p.begin([x], model)
    out = torch.empty(3, 4)
    storage_bytes(out).fill_(0xFF)
    before = p.before_launch("k", [x, out, model.weight], (3,))
    out.copy_(x * 2)                                             # "the kernel" writes out
    p.after_launch([x, out, model.weight], before)
    assert p.end(out, [x]) == []
    elsewhere = torch.sigmoid(x)                                 # computed outside any kernel
    p.before_launch("copy", [elsewhere, out], ())
    assert "kernel copy is fed a (3, 4) tensor" in p.findings[-1]
    p2 = Provenance()
    p2.begin([x], model)
    assert p2.end(x, [x]) == ["output 0 was not written by a Triton kernel (or was changed after)",
                              "input 0 never reaches a Triton kernel"]
    x.add_(1)
    assert p2.changed_sources([x], model) == ["mutates its input 0"]
    p3 = Provenance()                                            # a kernel's output overwritten afterwards
    p3.begin([x], model)
    o = torch.zeros(3, 4)
    b = p3.before_launch("k", [x, o], ())
    o.fill_(1.0)
    p3.after_launch([x, o], b)
    o.add_(1.0)
    assert p3.end(o, [x]) == ["output 0 was not written by a Triton kernel (or was changed after)"]


def _load_worker():
    import importlib.util

    from nemoh.kernels.sandbox import HERE
    spec = importlib.util.spec_from_file_location("cand_worker_under_test", HERE / "cand_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_timing_loop_catches_state_kept_across_calls():
    w = _load_worker()
    values = [[torch.randn(8)], [torch.randn(8)]]
    buffers = [values[0][0].clone()]

    class Honest:
        def __call__(self, x):
            return x * 2

    class Cached:
        cache = None

        def __call__(self, x):
            self.cache = x * 2 if self.cache is None else self.cache
            return self.cache

    def timer(fn):
        return 1.0, fn()
    same = torch.equal
    ok = w.time_candidate(Honest(), buffers, values, 2, 4, timer, lambda: 1, same)
    assert ok["findings"] == [] and ok["ms"] == 1.0 and torch.equal(ok["outputs"][1], values[1][0] * 2)
    # a cache keyed on nothing: the first output per value set goes to the parent, which compares it with the
    # reference for those values (judge._timed): value set 1 got value set 0's answer
    bad = w.time_candidate(Cached(), [values[0][0].clone()], values, 2, 4, timer, lambda: 1, same)
    assert not torch.equal(bad["outputs"][1], values[1][0] * 2)

    class StaleLater:                                           # honest at first, then replays its last output
        calls, last = 0, None

        def __call__(self, x):
            self.calls += 1
            self.last = x * 2 if self.calls <= 2 else self.last
            return self.last
    stale = w.time_candidate(StaleLater(), [values[0][0].clone()], values, 2, 4, timer, lambda: 1, same)
    assert any("differs from the first" in f for f in stale["findings"])
    none = w.time_candidate(Honest(), [values[0][0].clone()], values, 1, 2, timer, lambda: 0, same)
    assert any("launches no kernel" in f for f in none["findings"])


def test_reward_and_report_treat_new_classes_honestly():
    fast = Verdict("p", correct=True, speedup_eager=4.0, mode="gpu")
    assert score(fast) == pytest.approx(1.5)
    assert score(Verdict("p", correct=True, speedup_eager=40.0, mode="gpu", speed_review="pending")) == 1.0
    assert score(Verdict("p", correct=True, speedup_eager=40.0, mode="gpu", speed_review="cleared")) == 1.5
    assert score(Verdict("p", failure="does_not_fit")) == 0.0
    vs = [Verdict("a", correct=True), Verdict("a", failure="numeric_mismatch"), Verdict("b", failure="does_not_fit"),
          Verdict("b", failure="does_not_fit")]
    s = summarize(vs)
    assert s["funnel"]["samples"] == 2 and s["fast"]["fast_0"] == 0.5 and s["pass_at_k"]["pass@1"] == 0.5
    assert s["does_not_fit"] == {"samples": 2, "problems": ["b"]} and s["failures"]["does_not_fit"] == 2


def test_export_minimal_traces_and_says_why_rows_are_left_out():
    code = (DATA / "solutions" / "1_SiLU.py").read_text()
    problem = (DATA / "problems" / "1_SiLU.py").read_text()
    traces = [{"problem": "nemoh/1_SiLU", "sample": 0, "problem_code": problem, "code": code},
              {"problem": "nemoh/1_SiLU", "sample": 1, "problem_code": problem, "code": code}]
    verdicts = [Verdict("nemoh/1_SiLU", 0, correct=True), Verdict("nemoh/1_SiLU", 1, failure="numeric_mismatch")]
    skipped = Counter()
    rows = build_dataset(traces, verdicts, 0.0, skipped)   # no "prompt" field: the zero-shot prompt is rebuilt
    assert len(rows) == 1 and "class Model" in rows[0]["messages"][0]["content"] and skipped == {"not correct": 1}
    skipped = Counter()
    assert build_dataset(traces, verdicts, 1.2, skipped) == []
    assert any("no GPU timing" in why for why in skipped)
    json.dumps(rows)


def test_sandbox_modules_import_nothing_from_nemoh():
    """`python -I` would import an installed nemoh (another copy): the worker scripts load their siblings by path."""
    import nemoh.kernels
    from nemoh.kernels.sandbox import HERE
    assert HERE == __import__("pathlib").Path(nemoh.kernels.__file__).resolve().parent
    for name in ("cand_worker", "ref_worker", "rules", "provenance"):
        tree = ast.parse((HERE / f"{name}.py").read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.startswith(("nemoh", ".")) for m in mods), (name, mods)
    assert math.isfinite(1.0)
