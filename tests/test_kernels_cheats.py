"""The cheat corpus against the verifier (real sandboxed processes, the Triton interpreter on a CPU). Every cheat
targets a problem whose shipped solution passes, and gets its documented class: with the static rules on (the
default) and, for those marked `# runtime:`, with them off, so that each runtime layer (process boundary, launch
provenance, audit hook, input trials) is shown to stop the class on its own."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from nemoh.cli.main import main as cli
from nemoh.kernels import SandboxConfig, score, verify_code
from nemoh.kernels.problems import DATA

# one of each class in the default suite; the whole corpus under -m slow
FAST = ["probes/2_Softmax_wide", "nemoh/1_SiLU~numpy_host_compute",
        "probes/1_ReLU_nonneg~relu_copy", "probes/2_Softmax_wide~softmax_constant", "probes/4_Sum_all~scalar_smuggle",
        "probes/3_LeakyReLU~hardcoded_slope"]
FAST_RUNTIME = ["nemoh/4_Matmul~disables_aten_recorder", "nemoh/1_SiLU~triton_build_helper",
                "nemoh/1_SiLU~frame_walk_reference"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "ex.jsonl"
    assert cli(["kernels", "examples", "--out", str(out), "--cheats"]) == 0
    return {r["problem"]: r for r in map(json.loads, out.read_text().splitlines())}


def _judge(rows: list[tuple[dict, bool]]) -> dict:
    """Verdicts for (row, static_rules) pairs, two sandboxes at a time."""
    def one(item):
        row, static = item
        cfg = SandboxConfig(timeout_s=60, static_rules=static)
        return (row["problem"], static), verify_code(row["problem_code"], row["code"], row["problem"], cfg=cfg)
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, rows))


def _check(corpus: dict, verdicts: dict) -> None:
    wrong = {}
    for (name, static), v in verdicts.items():
        row = corpus[name]
        want = row["expect"] if static else row["expect_runtime"]
        got = "correct" if v.correct else v.failure
        if got != want:
            wrong[(name, static)] = (want, got, v.detail[:200])
        if row.get("expect_flag") and static:
            assert any(row["expect_flag"] in f for f in v.flags), (name, v.flags)
        if got == "correct" and not row.get("expect_flag"):
            assert not v.flags and v.launches >= 1 and v.trials == ["seed0", "seed1", "neg", "up", "down"], name
    assert not wrong, wrong
    # every cheat's problem has a shipped solution that passes: the cheat is judged against a solvable problem
    for name in {n for n, _ in verdicts if "~" in n}:
        assert (DATA / "solutions" / f"{name.split('~')[0].split('/')[1]}.py").exists(), name


def test_cheat_classes_fast(corpus):
    verdicts = _judge([(corpus[n], True) for n in FAST] + [(corpus[n], False) for n in FAST_RUNTIME])
    _check(corpus, verdicts)
    assert "trial neg" in verdicts["probes/1_ReLU_nonneg~relu_copy", True].detail
    assert "relative L2" in verdicts["probes/2_Softmax_wide~softmax_constant", True].detail
    assert "fed a (128, 96) tensor" in verdicts["nemoh/4_Matmul~disables_aten_recorder", False].detail
    assert "starts a process" in verdicts["nemoh/1_SiLU~triton_build_helper", False].detail or \
        "writes outside" in verdicts["nemoh/1_SiLU~triton_build_helper", False].detail
    assert score(verdicts["nemoh/1_SiLU~numpy_host_compute", True]) == -1.0


@pytest.mark.slow
def test_whole_corpus_static_and_runtime(corpus):
    rows = [(r, True) for r in corpus.values()] + [(r, False) for r in corpus.values() if r.get("expect_runtime")]
    _check(corpus, _judge(rows))
