"""The one job-config loader (nemoh.config_loader) used by SFT and RL: types checked while the config is built,
unknown and moved settings named in one line, shared sections (`[parallel]`, `[lora]`, `[optim]`) the same classes."""
import pytest
import torch
from safetensors.torch import load_file

from nemoh.cli.main import main as cli
from nemoh.config_loader import load_config
from nemoh.lora import LoRAConfig
from nemoh.parallel import ParallelConfig
from nemoh.rl.config import RLConfig
from nemoh.train.config import SFTConfig


@pytest.mark.parametrize("cls", [SFTConfig, RLConfig])
@pytest.mark.parametrize("flag,value,named", [
    ("--optim.betas", "(0.9,)", "optim.betas"),            # a 2-tuple given one value
    ("--optim.lr", "fast", "optim.lr"),
    ("--train.seed", "1.5", "train.seed"),
    ("--checkpoint.resume", "maybe", "checkpoint.resume"),
    ("--parallel.tp", "two", "parallel.tp"),
])
def test_wrong_types_on_the_command_line_are_rejected_at_build_time(cls, flag, value, named):
    with pytest.raises(ValueError, match=rf"^{named}: expected"):
        load_config(cls, None, [flag, value])


@pytest.mark.parametrize("toml,named", [
    ("[optim]\nbetas = [0.9]\n", "optim.betas"),
    ("[optim]\nlr = \"1e-3\"\n", "optim.lr"),             # a string where TOML could have said 1e-3
    ("[train]\nseed = true\n", "train.seed"),             # a bool is not an int
    ("[checkpoint]\nresume = 1\n", "checkpoint.resume"),
    ("[lora]\ntargets = \"*.q_proj\"\n", "lora.targets"),
    ("[parallel]\nep = 2.0\n", "parallel.ep"),
    ("optim = 3\n", r"\[optim\]"),
])
def test_wrong_types_in_toml_are_rejected_at_build_time(tmp_path, toml, named):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match=named):
        load_config(SFTConfig, path)


def test_values_are_normalised_and_unknown_or_moved_settings_named(tmp_path):
    cfg = load_config(SFTConfig, None, ["--optim.betas", "[0.8, 0.9]", "--optim.lr", "1", "--lora.r", "4"])
    assert cfg.optim.betas == (0.8, 0.9) and isinstance(cfg.optim.lr, float) and cfg.lora.r == 4
    with pytest.raises(ValueError, match=r"^override --train.stepz: unknown setting$"):
        load_config(SFTConfig, None, ["--train.stepz", "3"])
    path = tmp_path / "c.toml"
    path.write_text("[train]\ngrad_clip = 0.5\n")
    with pytest.raises(ValueError, match=r"^\[train\] grad_clip: moved to optim.grad_clip$"):
        load_config(RLConfig, path)
    with pytest.raises(ValueError, match="moved to --optim.grad_clip"):
        load_config(RLConfig, None, ["--train.grad_clip", "0.5"])


def test_shared_sections_are_the_components_own_configs():
    for cls in (SFTConfig, RLConfig):
        cfg = load_config(cls, None, ["--parallel.tp", "2", "--optim.grad_clip", "0.5"])
        assert type(cfg.parallel) is ParallelConfig and cfg.parallel.tp == 2 and cfg.optim.grad_clip == 0.5
    sft = load_config(SFTConfig, None, ["--lora.enabled", "true"])
    assert isinstance(sft.lora, LoRAConfig) and sft.lora.scale == 2.0
    # a section's defaults are the job config's (RL: constant lr, no warmup), not the section class's
    assert load_config(RLConfig).optim == RLConfig().optim and load_config(RLConfig).checkpoint.dir == "runs/rl"


def test_cli_reports_a_wrong_type_in_one_line(capsys):
    assert cli(["rl", "--optim.betas", "(0.9,)"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "nemoh rl: error: optim.betas: expected a list of 2 numbers, got (0.9,)"


def test_rl_honours_optim_grad_clip(tmp_path):
    """Clipping the gradient to 1e-10 leaves every element far below AdamW's eps (1e-8), so each update is at most
    lr x 1e-10 / 1e-8 = lr / 100; unclipped (or clipped at the old `train.grad_clip` default of 1) AdamW moves the
    weights that get a gradient by about lr."""
    from nemoh.rl.trainer import RLTrainer
    run, lr = tmp_path / "rl", 1e-2
    cfg = load_config(RLConfig, None, [
        "--checkpoint.dir", str(run), "--train.rollouts", "1", "--train.eval_every", "0", "--data.num_eval", "2",
        "--rollout.n_samples_per_prompt", "4", "--rollout.rollout_batch_size", "4", "--train.global_batch_size", "16",
        "--train.micro_batch_size", "16", "--optim.lr", str(lr), "--optim.grad_clip", "1e-10",
        "--reward.function", "rl_helpers:lowercase_share"])
    out = RLTrainer(cfg, show_progress=False).run()
    assert out["grad_norm"] > 1e-6                          # a real gradient, clipped before the step
    before, after = load_file(run / "base" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    moved = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    assert moved < lr / 50, moved
    assert torch.isfinite(torch.tensor(moved))
