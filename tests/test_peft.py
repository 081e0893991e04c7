"""nemoh's LoRA adapters and PEFT's, both ways, with real peft on transformers' NemotronHForCausalLM: logits and
merges agree, and an adapter that does not fit names the key."""
import json
import logging
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from reference import save_reference
from safetensors.torch import load_file, save_file
from transformers import NemotronHForCausalLM as HFModel

from nemoh import NemotronHForCausalLM
from nemoh.cli.main import main as cli
from nemoh.lora import (
    DEFAULT_TARGETS,
    LoRAConfig,
    adapted,
    apply_lora,
    load_adapter,
    lora_parameters,
    merge_lora,
    save_adapter,
)

# Mamba, attention, dense MLP and MoE blocks. Non-latent: expert input L = 32 != F = 16, so every expert factor's
# shape is distinct; latent: L = F = 16, so which nested ParamWrapper is up_proj is told by PEFT's nesting order alone.
CASES = {"moe": ("M*-E", {}), "latent-moe": ("M*-E", {"moe_latent_size": 16})}
NEMOH_TARGETS = DEFAULT_TARGETS + ["backbone.*_latent_proj"]
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj"]
# both forwards are float32 and agree to ~6e-7 without adapters (test_parity); the adapters add O(1) deltas computed
# in the same precision, so 1e-5 is a few float32 roundings of logits of size ~2
TOL = 1e-5


def _pair(tmp_path, case, seed=0):
    pattern, overrides = CASES[case]
    save_reference(tmp_path / "base", pattern, seed=seed, **overrides)
    hf = HFModel.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    # transformers clamps dt >= time_step_min in its prefill; reproduce that exactly
    ours = NemotronHForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32, mamba_dt_clamp=True).eval()
    return hf, ours


def _randomise(params, std=0.2):
    with torch.no_grad():
        for p in params:
            p.normal_(std=std)


def _peft_lora(model):
    return [p for n, p in model.named_parameters() if ".lora_" in n]


def _weights(model, rename=lambda n: n):
    return {rename(n): p.detach() for n, p in model.state_dict().items()}


def _assert_same_weights(ours, hf_merged):
    want = _weights(hf_merged)
    got = _weights(ours, lambda n: "model." + n.removeprefix("backbone.") if n.startswith("backbone.") else n)
    assert set(want) <= set(got), set(want) - set(got)
    # merged weights are W + scale*B@A in both, summed in float32 (nemoh) or in the weight's float32: a few ulps
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst < 1e-6, worst


@pytest.mark.parametrize("case", sorted(CASES))
def test_nemoh_adapter_loads_in_peft(tmp_path, case, caplog):
    hf, ours = _pair(tmp_path, case)
    ids = torch.randint(0, 96, (2, 13))
    with torch.no_grad():
        base = ours(ids).logits
    names = apply_lora(ours, LoRAConfig(r=4, alpha=8, targets=NEMOH_TARGETS))
    assert {n.rsplit(".", 1)[-1] for n in names} >= {"q_proj", "in_proj", "up_proj", "down_proj"}
    _randomise(lora_parameters(ours))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nemoh's own PEFT-compatibility warning would fail here
        save_adapter(ours, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_parameters"] == ["experts.down_proj", "experts.up_proj"]

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    from_peft = [str(w.message) for w in caught if "/peft/" in w.filename]
    assert not from_peft and not [r for r in caplog.records if r.name.startswith("peft")], from_peft
    with torch.no_grad():
        want = ours(ids).logits
        got = peft_model(ids).logits
        experts = [f for path, f in adapted(ours).items() if ".experts." in path]
        saved = [f.lora_B.clone() for f in experts]
        for f in experts:
            f.lora_B.zero_()
        without_experts = ours(ids).logits
        for f, b in zip(experts, saved):
            f.lora_B.copy_(b)
    # the adapter matters, its routed-expert part too: PEFT ignoring either would miss TOL by far
    assert (want - base).abs().max() > 0.1 and (want - without_experts).abs().max() > 0.01
    assert (got - want).abs().max().item() < TOL

    merge_lora(ours)
    _assert_same_weights(ours, peft_model.merge_and_unload())


@pytest.mark.parametrize("case", sorted(CASES))
# PEFT applies rank/alpha patterns to parameter targets but still warns that they matched no module
@pytest.mark.filterwarnings("ignore:The following (rank|alpha)_pattern keys did not match")
def test_peft_adapter_loads_in_nemoh(tmp_path, case):
    hf, ours = _pair(tmp_path, case)
    latent = ["fc1_latent_proj", "fc2_latent_proj"] if case == "latent-moe" else []
    config = LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS + latent,
                        target_parameters=["experts.up_proj", "experts.down_proj"],
                        rank_pattern={"q_proj": 2, "experts.down_proj": 3}, alpha_pattern={"experts.up_proj": 5},
                        use_rslora=case == "latent-moe")
    peft_model = get_peft_model(hf, config).eval()
    _randomise(_peft_lora(peft_model))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 96, (2, 13))
    with torch.no_grad():
        want = peft_model(ids).logits
        with peft_model.disable_adapter():
            base = peft_model(ids).logits
    assert (want - base).abs().max() > 0.1

    paths = load_adapter(ours, tmp_path / "adapter")
    assert "backbone.layers.3.mixer.experts.up_proj" in paths and "backbone.layers.3.mixer.experts.down_proj" in paths
    with torch.no_grad():
        got = ours(ids).logits
    assert (got - want).abs().max().item() < TOL

    # what nemoh writes back is PEFT's file, key for key
    save_adapter(ours, tmp_path / "again")
    theirs = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    mine = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert set(theirs) == set(mine) and all(torch.equal(theirs[k], mine[k]) for k in theirs)

    merge_lora(ours)
    hf_merged = peft_model.merge_and_unload()
    _assert_same_weights(ours, hf_merged)
    if case == "latent-moe":  # and from the command line, into a checkpoint
        assert cli(["merge-lora", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged"),
                    "--dtype", "float32"]) == 0
        _assert_same_weights(NemotronHForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32), hf_merged)


def test_sft_init_from_a_peft_adapter(tmp_path):
    """`nemoh sft --lora.init_from` starts from PEFT's factors (a near-zero learning rate keeps them) and writes
    them back under PEFT's keys."""
    assert cli(["init-tiny", str(tmp_path / "base")]) == 0
    hf = HFModel.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_model = get_peft_model(hf, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "in_proj"],
                                               target_parameters=["experts.up_proj"]))
    _randomise(_peft_lora(peft_model))
    peft_model.save_pretrained(tmp_path / "adapter")
    run = tmp_path / "run"
    assert cli(["sft", "--model.path", str(tmp_path / "base"), "--lora.enabled", "true", "--lora.init_from",
                str(tmp_path / "adapter"), "--train.steps", "1", "--optim.lr", "1e-12", "--checkpoint.dir", str(run),
                "--train.eval_every", "0", "--data.eval", "", "--quiet"]) == 0
    start = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    end = load_file(run / "adapter" / "adapter_model.safetensors")
    assert set(start) == set(end)
    # one AdamW step moves each factor by at most ~lr = 1e-12
    assert max((start[k] - end[k]).abs().max().item() for k in start) < 1e-9


def _tiny_adapter(tmp_path):
    """A nemoh adapter on the built-in tiny model (no transformers involved): the base for the malformed cases."""
    from nemoh import get_preset
    model = NemotronHForCausalLM.from_config(get_preset("tiny").replace(vocab_size=64), seed=0)
    apply_lora(model, LoRAConfig(r=2, alpha=4))
    save_adapter(model, tmp_path / "good")
    return lambda: NemotronHForCausalLM.from_config(get_preset("tiny").replace(vocab_size=64), seed=0)


def _rewrite(tmp_path, name, edit_tensors=None, edit_config=None):
    out = tmp_path / name
    out.mkdir()
    tensors = load_file(tmp_path / "good" / "adapter_model.safetensors")
    config = json.loads((tmp_path / "good" / "adapter_config.json").read_text())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    save_file(tensors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


Q_A = "base_model.model.model.layers.1.mixer.q_proj.lora_A.weight"
UP_A = "base_model.model.model.layers.2.mixer.experts.base_layer.lora_A.weight"


def test_an_adapter_that_does_not_fit_names_the_key(tmp_path, capsys):
    fresh = _tiny_adapter(tmp_path)
    cases = {
        "mis-shaped": (lambda t: t.__setitem__(Q_A, torch.zeros(2, 63)), None, Q_A),
        "expert mis-shaped": (lambda t: t.__setitem__(UP_A, torch.zeros(16, 63)), None, UP_A),
        "unknown module": (lambda t: [t.__setitem__(k.replace("q_proj", "qq_proj"), t.pop(k)) for k in list(t)
                                      if ".1.mixer.q_proj" in k], None, "qq_proj"),
        "no partner": (lambda t: t.pop(Q_A.replace("lora_A", "lora_B")), None, Q_A),
        "not a factor": (lambda t: t.__setitem__("base_model.model.model.layers.1.mixer.q_proj.weight", torch.zeros(1)),
                         None, "q_proj.weight"),
        "rank vs config": (None, lambda c: c.update(r=3), "lora_A.weight' has rank 2"),
        "experts without target_parameters": (None, lambda c: c.update(target_parameters=None), "target_parameters"),
        "DoRA": (None, lambda c: c.update(use_dora=True), "use_dora"),
    }
    for name, (edit_tensors, edit_config, needle) in cases.items():
        bad = _rewrite(tmp_path, name.replace(" ", "-"), edit_tensors, edit_config)
        model = fresh()
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")) as err:
            load_adapter(model, bad)
        assert str(bad) in str(err.value), name
        assert not lora_parameters(model), name  # nothing half-applied
    # from the command line: one line naming the key, no traceback
    bad = tmp_path / "mis-shaped"
    (tmp_path / "ckpt").mkdir()
    fresh().save_pretrained(tmp_path / "ckpt")
    assert cli(["merge-lora", str(tmp_path / "ckpt"), str(bad), str(tmp_path / "out")]) != 0
    err = capsys.readouterr()
    assert Q_A in err.err + err.out and "Traceback" not in err.err + err.out
