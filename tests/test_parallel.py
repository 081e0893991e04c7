"""torchrun on CPU/gloo: every layout (FSDP2, tensor parallel, expert parallel and their combinations, 2 and 4
processes) reproduces the single-process run: every gradient after one backward, then SFT losses, gradient norms
and exported weights, and RL; checkpoints reshard between layouts; bad layouts are refused up front."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from net import free_port
from safetensors.torch import load_file

from nemoh.model import get_preset
from nemoh.parallel import ParallelConfig, plan_memory
from nemoh.train.metrics import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _launch(nproc, args, env=None):
    """python ARGS, under torchrun with a free rendezvous port when nproc > 1 (port 0 would hang it)."""
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(free_port()), *args]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


def _sft(run_dir, nproc, rows_per_rank, *extra):
    args = [
        "-m",
        "nemoh.cli.main",
        "sft",
        "--checkpoint.dir",
        str(run_dir),
        "--train.steps",
        "4",
        "--quiet",
        "--data.rows_per_step",
        str(rows_per_rank),
        "--train.eval_every",
        "0",
        "--data.seq_len",
        "256",
        "--data.on_error",
        "skip",
        *extra,
    ]  # short rows on purpose: the built-in chats longer than 256 are dropped
    _launch(nproc, args)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process reference run: 4 steps of 2 packed rows."""
    run = tmp_path_factory.mktemp("single") / "one"
    _sft(run, 1, 2)
    return run


@pytest.fixture(scope="module")
def single4(single, tmp_path_factory):
    """The same with 4 rows a step (for layouts with 4 data ranks)."""
    run = _with_base(single, tmp_path_factory.mktemp("single4") / "one")
    _sft(run, 1, 4)
    return run


def _same_run(a, b):
    ra = [r for r in read_metrics(a) if "loss" in r]
    rb = [r for r in read_metrics(b) if "loss" in r]
    assert len(ra) == len(rb) == 4
    for key in ("loss", "grad_norm"):  # the gradient norm checks the gradients' scale, which AdamW would hide
        xa, xb = [r[key] for r in ra], [r[key] for r in rb]
        assert max(abs(x - y) / max(1.0, abs(x)) for x, y in zip(xa, xb)) < 1e-5, (key, xa, xb)
    wa = load_file(a / "final" / "model.safetensors")
    wb = load_file(b / "final" / "model.safetensors")
    assert set(wa) == set(wb) and max((wa[k] - wb[k]).abs().max().item() for k in wa) < adam_tolerance(1e-3, 4)


def adam_tolerance(lr: float, steps: int) -> float:
    """How far two runs' final weights may differ when their gradients differ only by float32 reduction order.
    AdamW normalises each update to about `lr` per element whatever the gradient's scale, so a gradient component
    near cancellation (|g| at float32 noise) can take a different step in each run; the per-element gap is bounded
    by the update budget lr x steps. We allow 1/400 of that budget: a real divergence (a wrong shard, a missed
    reduction) moves weights by a sizeable fraction of it, while reduction-order noise measured 1e-6..1.5e-5."""
    return 2.5e-3 * lr * steps


def _with_base(single, run):
    run.mkdir()
    shutil.copytree(single / "base", run / "base")  # the same starting weights
    return run


@pytest.mark.slow  # torchrun: several processes
def test_fsdp_two_processes_match_one(single, tmp_path):
    two = _with_base(single, tmp_path / "two")
    _sft(two, 2, 1)
    _same_run(single, two)


LAYOUTS = {  # name: (processes, rows per data rank, flags); tp ranks share their data rank's rows
    "hsdp2_tp2": (4, 1, ["--parallel.dp_replicate", "2", "--parallel.tp", "2", "--parallel.dp_shard", "1"]),
    "tp2": (2, 2, ["--parallel.tp", "2", "--parallel.dp_shard", "1"]),
    "ep2": (2, 1, ["--parallel.ep", "2", "--parallel.dp_shard", "1"]),
    "tp2_ep2": (4, 1, ["--parallel.tp", "2", "--parallel.ep", "2", "--parallel.dp_shard", "1"]),
    "fsdp2_tp2": (4, 1, ["--parallel.tp", "2", "--parallel.dp_shard", "2"]),
}


@pytest.mark.slow  # torchrun: several processes
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parallel_layouts_match_one_process(single, tmp_path, layout):
    nproc, rows, flags = LAYOUTS[layout]
    run = _with_base(single, tmp_path / layout)
    _sft(run, nproc, rows, *flags)
    _same_run(single, run)


def _grads(base, out, nproc, tp, ep, dp_shard, dp_replicate=1):
    script = Path(__file__).parent / "parallel_grads.py"
    _launch(nproc, [str(script), str(base), str(out), str(tp), str(ep), str(dp_shard), str(dp_replicate)])
    return torch.load(out)


GRAD_LAYOUTS = {  # name: (processes, tp, ep, dp_shard, dp_replicate)
    "fsdp2": (2, 1, 1, 2, 1),
    "tp2": (2, 2, 1, 1, 1),
    "ep2": (2, 1, 2, 1, 1),
    "tp2_ep2": (4, 2, 2, 1, 1),
    "fsdp2_tp2": (4, 2, 1, 2, 1),
    "fsdp2_ep2": (4, 1, 2, 2, 1),
    "hsdp2x2": (4, 1, 1, 2, 2),
    "hsdp2_ep2": (4, 1, 2, 1, 2),
}


@pytest.fixture(scope="module")
def grads_one(single, tmp_path_factory):
    return _grads(single / "base", tmp_path_factory.mktemp("g") / "one.pt", 1, 1, 1, 1)


@pytest.mark.slow  # torchrun: several processes
@pytest.mark.parametrize("layout", sorted(GRAD_LAYOUTS))
def test_one_backward_gives_the_single_process_gradients(single, grads_one, tmp_path, layout):
    """Every parameter's gradient, gathered to its canonical (Hub) shape, equals the single-process one (1e-5):
    packed documents, tp-split fused projections, ep-split experts and the replicated router included."""
    got = _grads(single / "base", tmp_path / "g.pt", *GRAD_LAYOUTS[layout])
    assert abs(got["loss"] - grads_one["loss"]) < 1e-5
    ref = grads_one["grads"]
    assert set(got["grads"]) == set(ref) and len(ref) > 30
    for name, g in ref.items():
        assert got["grads"][name].shape == g.shape, name
        assert (got["grads"][name] - g).abs().max().item() < 1e-5, name


@pytest.mark.slow  # torchrun: several processes
def test_bf16_model_with_mixed_precision_under_fsdp(single, tmp_path):
    """bf16 weights with fp32-by-design SSM and router parameters (mixed dtypes, which FSDP2 groups cannot hold):
    FSDP leaves those replicated, the run tracks the single-process bf16 run and exports them in fp32."""
    flags = ["--model.dtype", "bfloat16"]
    one = _with_base(single, tmp_path / "one")
    _sft(one, 1, 2, *flags)
    two = _with_base(single, tmp_path / "two")
    _sft(two, 2, 1, *flags, "--parallel.mixed_precision", "true", "--parallel.activation_checkpointing", "true")
    la = [r["loss"] for r in read_metrics(one) if "loss" in r]
    lb = [r["loss"] for r in read_metrics(two) if "loss" in r]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 2e-2, (la, lb)
    w = load_file(two / "final" / "model.safetensors")
    assert w["backbone.layers.0.mixer.A_log"].dtype == torch.float32
    assert w["backbone.layers.0.mixer.in_proj.weight"].dtype == torch.bfloat16


@pytest.mark.slow  # torchrun: several processes
def test_fsdp_times_ep_four_data_ranks(single4, tmp_path):
    """dp_shard=2 x ep=2: four data ranks, experts split over ep and sharded over dp_shard."""
    run = _with_base(single4, tmp_path / "fsdp2_ep2")
    _sft(run, 4, 1, "--parallel.ep", "2", "--parallel.dp_shard", "2")
    _same_run(single4, run)


@pytest.mark.slow  # torchrun: several processes
def test_resume_reshards_between_tp_ep_and_one_process(single, tmp_path):
    """tp2 x ep2 (4 processes) -> 1 process, and 1 process -> tp2: both continue the single run exactly."""
    run = _with_base(single, tmp_path / "from_4")
    _sft(run, 4, 1, "--checkpoint.every", "2", "--train.stop_after", "2", *LAYOUTS["tp2_ep2"][2])
    _sft(run, 1, 2, "--checkpoint.every", "2", "--checkpoint.resume", "true")
    _same_run(single, run)
    run = _with_base(single, tmp_path / "to_tp2")
    _sft(run, 1, 2, "--checkpoint.every", "2", "--train.stop_after", "2")
    _sft(run, 2, 2, "--checkpoint.every", "2", "--checkpoint.resume", "true", *LAYOUTS["tp2"][2])
    _same_run(single, run)


def test_shard_spec_splits_each_segment_of_a_fused_projection():
    import torch

    from nemoh.parallel.specs import ShardSpec

    spec = ShardSpec("tp", 0, (4, 2))  # e.g. [z | dt]
    full = torch.arange(6)
    assert spec.local(full, 0, 2).tolist() == [0, 1, 4] and spec.local(full, 1, 2).tolist() == [2, 3, 5]


@pytest.mark.slow  # torchrun: several processes
def test_resharded_resume_continues_exactly(single, tmp_path):
    """Save a DCP checkpoint at 2 processes (FSDP shards), resume it in 1 process: the run goes on as if whole."""
    run = _with_base(single, tmp_path / "resharded")
    _sft(run, 2, 1, "--checkpoint.every", "2", "--train.stop_after", "2")
    assert (run / "checkpoints" / "step_000002").exists() and not (run / "final").exists()
    _sft(run, 1, 2, "--checkpoint.every", "2", "--checkpoint.resume", "true")
    _same_run(single, run)


def test_layouts_are_checked_up_front():
    cfg = get_preset("nano-30b-a3b")
    with pytest.raises(ValueError, match="world size"):
        ParallelConfig(dp_shard=3).resolve(8, cfg)
    with pytest.raises(ValueError, match="parallel.ep"):
        ParallelConfig(ep=3, dp_shard=1).resolve(3, cfg)
    with pytest.raises(ValueError, match="parallel.tp"):
        ParallelConfig(tp=3, dp_shard=1).resolve(3, cfg)
    assert ParallelConfig().resolve(8, cfg).dp_shard == 8


def test_memory_plan_against_published_layouts():
    nano = plan_memory(get_preset("nano-30b-a3b"), gpus=8, gpu_mem_gib=141)
    assert nano.fits and 31e9 < nano.num_params < 32.5e9
    sup_one = plan_memory(get_preset("super-120b-a12b"), gpus=8, gpu_mem_gib=80)
    sup_two = plan_memory(get_preset("super-120b-a12b"), gpus=16, gpu_mem_gib=141)
    assert not sup_one.fits and sup_two.fits  # Super needs two nodes, as the published recipe uses
    hsdp = plan_memory(get_preset("nano-30b-a3b"), gpus=16, gpu_mem_gib=141, dp_replicate=2)
    assert hsdp.params == pytest.approx(2 * plan_memory(get_preset("nano-30b-a3b"), gpus=16, gpu_mem_gib=141).params)
    r = subprocess.run(
        [sys.executable, "-m", "nemoh.cli.main", "plan", "nano-30b-a3b", "--gpus", "8", "--gpu-mem", "141"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "fits in 141 GiB: yes" in r.stdout and "optimizer" in r.stdout
    # the recipes' own layouts: Nano-30B's tp2 x ep4 on one node, Super's tp2 x ep8 on two, not on one
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nemoh.cli.main",
            "plan",
            str(CONFIGS / "nano-30b-a3b-grpo.toml"),
            "--gpus",
            "8",
            "--gpu-mem",
            "141",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "tp=2, ep=4" in r.stdout and "fits in 141 GiB: yes" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nemoh.cli.main",
            "plan",
            str(CONFIGS / "super-120b-a12b-grpo.toml"),
            "--gpus",
            "16",
            "--gpu-mem",
            "141",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "tp=2, ep=8" in r.stdout and "fits in 141 GiB: yes" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "nemoh.cli.main", "plan", str(CONFIGS / "super-120b-a12b-grpo.toml"), "--gpus", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "world size 8 is not divisible by tp=2 x ep=8" in r.stderr


RL_ARGS = [
    "--train.eval_every",
    "0",
    "--data.num_eval",
    "4",
    "--rollout.n_samples_per_prompt",
    "4",
    "--rollout.rollout_batch_size",
    "4",
    "--train.global_batch_size",
    "8",
    "--train.micro_batch_size",
    "4",
    "--train.num_steps_per_rollout",
    "2",
    "--train.rollouts",
    "3",
    "--rollout.rollout_max_response_len",
    "6",
    "--algo.use_rollout_routing_replay",
    "true",
    "--warm_start.steps",
    "5",
    "--quiet",
    "--reward.function",
    "rl_helpers:lowercase_share",
    "--optim.lr",
    "1e-2",
]


def _rl(run_dir, nproc, *extra):
    args = ["-m", "nemoh.cli.main", "rl", "--checkpoint.dir", str(run_dir), *RL_ARGS, *extra]
    tests = str(Path(__file__).parent)  # the reward function lives in tests/
    _launch(nproc, args, env={**os.environ, "PYTHONPATH": tests})
    return [r for r in read_metrics(run_dir) if "grad_norm" in r]


@pytest.mark.slow  # torchrun: several processes
def test_rl_under_torchrun_reproduces_one_process(tmp_path):
    """Rank 0's engine makes the same rollouts (R3 on) and tp2 x ep2 training makes the same updates."""
    one = _rl(tmp_path / "one", 1)
    run = tmp_path / "four"
    run.mkdir()
    shutil.copytree(tmp_path / "one" / "base", run / "base")
    four = _rl(run, 4, "--parallel.tp", "2", "--parallel.ep", "2", "--parallel.dp_shard", "1")
    assert len(one) == len(four) == 3
    for a, b in zip(one, four):
        assert abs(a["reward_mean"] - b["reward_mean"]) < 1e-6
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"]), (a["grad_norm"], b["grad_norm"])
        assert b["logprob_diff_max"] < 1e-4  # the gathered weights reach the engine: rollouts agree
    wa = load_file(tmp_path / "one" / "final" / "model.safetensors")
    wb = load_file(run / "final" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < adam_tolerance(1e-2, 3 * 2)  # 3 rollouts x 2 steps


@pytest.mark.slow  # torchrun: several processes
def test_rl_with_one_engine_per_data_rank(tmp_path):
    """rollout.engines = data_ranks: two engines each generate half of every round; all of them get the updated
    weights (the train/rollout log-prob gap stays at float32 noise after each update) and the batch is complete."""
    rows = _rl(tmp_path / "spread", 2, "--rollout.engines", "data_ranks", "--algo.dynamic_sampling", "true")
    assert len(rows) == 3
    for r in rows:
        assert r["logprob_diff_max"] < 1e-4 and r["reward_failures"] == 0 and 0 < r["reward_mean"] < 1
    assert (tmp_path / "spread" / "final" / "model.safetensors").exists()
