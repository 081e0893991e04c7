"""The SFT trainer on the built-in tiny model and data: learning, exact resume, safe checkpoints, plots, config."""
import json

import pytest
import torch
from safetensors.torch import load_file

from nemoh.cli.main import main as cli
from nemoh.train import state as train_state
from nemoh.train.config import load_config
from nemoh.train.metrics import read_metrics
from nemoh.train.sft import run_sft


def _cfg(run_dir, *overrides):
    return load_config(None, ["--checkpoint.dir", str(run_dir), "--train.eval_every", "0", *overrides])


def test_loss_falls_on_the_builtin_dataset(tmp_path):
    last = run_sft(_cfg(tmp_path / "run", "--train.steps", "40", "--optim.lr", "3e-3"), show_progress=False)
    rows = read_metrics(tmp_path / "run")
    first = rows[0]["loss"]
    assert last["loss"] < 0.6 * first, (first, last["loss"])
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "mfu"} <= set(rows[-1])
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert any((tmp_path / "run" / "tb").iterdir())


def test_interrupted_and_resumed_run_is_exact(tmp_path):
    common = ["--train.steps", "6", "--checkpoint.every", "3", "--data.rows_per_step", "1", "--train.grad_accum", "2"]
    run_sft(_cfg(tmp_path / "full", *common), show_progress=False)
    run_sft(_cfg(tmp_path / "cut", *common, "--train.stop_after", "3"), show_progress=False)
    assert not (tmp_path / "cut" / "final").exists()
    run_sft(_cfg(tmp_path / "cut", *common, "--checkpoint.resume", "true"), show_progress=False)
    full = [r["loss"] for r in read_metrics(tmp_path / "full") if "loss" in r]
    cut = [r["loss"] for r in read_metrics(tmp_path / "cut") if "loss" in r]
    assert full == cut and len(full) == 6
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "run", "--train.steps", "4", "--checkpoint.every", "2", "--train.stop_after", "2")
    run_sft(cfg, show_progress=False)
    real_save = train_state.dcp.save

    def dying(state, checkpoint_id):  # the tensors reach the disk, then the process is killed
        real_save(state, checkpoint_id=checkpoint_id)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(train_state.dcp, "save", dying)
    with pytest.raises(KeyboardInterrupt):
        run_sft(_cfg(tmp_path / "run", "--train.steps", "4", "--checkpoint.every", "2", "--checkpoint.resume", "true"),
                show_progress=False)
    monkeypatch.setattr(train_state.dcp, "save", real_save)
    assert [p.name for p in train_state.checkpoints(tmp_path / "run")] == ["step_000002"]
    last = run_sft(_cfg(tmp_path / "run", "--train.steps", "4", "--checkpoint.every", "2",
                        "--checkpoint.resume", "true"), show_progress=False)
    assert last and [p.name for p in train_state.checkpoints(tmp_path / "run")] == ["step_000002", "step_000004"]


def test_lora_sft_and_plot_from_the_cli(tmp_path):
    run = tmp_path / "lora"
    assert cli(["sft", "--checkpoint.dir", str(run), "--train.steps", "4", "--lora.enabled", "true", "--quiet",
                "--train.eval_every", "2"]) == 0
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["target_parameters"] == ["experts.down_proj", "experts.up_proj"]
    assert any("eval_loss" in r for r in read_metrics(run))
    assert cli(["plot", str(run)]) == 0
    assert (run / "plots" / "loss.png").stat().st_size > 1000


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="train.stepz"):
        load_config(None, ["--train.stepz", "3"])
    with pytest.raises(ValueError, match="optim.schedule"):
        load_config(None, ["--optim.schedule", "linear-ish"])
    with pytest.raises(ValueError, match="model.device"):
        load_config(None, ["--model.device", "gpu"])
    from nemoh.train.setup import resolve_device
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nsteps = 3\n[bogus]\nx = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        load_config(toml)
    toml.write_text("[train]\nsteps = 3\n[optim]\nlr = 0.01\n")
    cfg = load_config(toml, ["--optim.lr", "0.02"])
    assert cfg.train.steps == 3 and cfg.optim.lr == 0.02


def test_activation_checkpointing_is_exact_and_bf16_trains(tmp_path):
    common = ["--train.steps", "3", "--data.rows_per_step", "1"]
    run_sft(_cfg(tmp_path / "plain", *common), show_progress=False)
    run_sft(_cfg(tmp_path / "ckpt", *common, "--model.gradient_checkpointing", "true"), show_progress=False)
    plain = [r["loss"] for r in read_metrics(tmp_path / "plain") if "loss" in r]
    ckpt = [r["loss"] for r in read_metrics(tmp_path / "ckpt") if "loss" in r]
    assert max(abs(a - b) for a, b in zip(plain, ckpt)) < 1e-5
    run_sft(_cfg(tmp_path / "bf16", "--train.steps", "8", "--model.dtype", "bfloat16", "--optim.lr", "3e-3"),
            show_progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "bf16") if "loss" in r]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_resuming_a_finished_run_is_a_no_op_that_says_so(tmp_path, capsys):
    run = tmp_path / "done"
    args = ["sft", "--checkpoint.dir", str(run), "--train.steps", "2", "--checkpoint.every", "2", "--quiet",
            "--train.eval_every", "0", "--data.rows_per_step", "1"]
    assert cli(args) == 0
    final = (run / "final" / "model.safetensors").read_bytes()
    rows = len(read_metrics(run))
    capsys.readouterr()
    assert cli(args + ["--checkpoint.resume", "true"]) == 0      # was KeyError 'loss'
    assert "already finished (checkpoint at step 2" in capsys.readouterr().out
    assert (run / "final" / "model.safetensors").read_bytes() == final and len(read_metrics(run)) == rows
