"""LoRA on a MoE config, experts included: merge equality, adapter save/load, only adapters train."""
import torch

from nemoh import NemotronHForCausalLM, get_preset
from nemoh.cli.main import main as cli
from nemoh.lora import LoRAConfig, apply_lora, load_adapter, lora_parameters, merge_lora, save_adapter


def _model(seed=0):
    cfg = get_preset("tiny-latent").replace(vocab_size=320)  # MoE with latent projections and experts
    return NemotronHForCausalLM.from_config(cfg, seed=seed)


def _randomise_adapters(model):
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(std=0.05)


def test_merge_equals_base_plus_adapter_experts_included():
    model = _model()
    names = apply_lora(model, LoRAConfig(r=4, alpha=8))
    assert any(n.endswith("mixer.experts") for n in names) and any(n.endswith("q_proj") for n in names)
    _randomise_adapters(model)
    ids = torch.randint(0, 320, (2, 19))
    with torch.no_grad():
        with_adapter = model(ids).logits
        expert_delta = model.backbone.layers[2].mixer.experts.lora_B_up.abs().sum()
        merge_lora(model)
        merged = model(ids).logits
    assert expert_delta > 0
    assert (merged - with_adapter).abs().max() < 1e-5
    assert not any(".lora_" in n for n, _ in model.named_parameters())


def test_adapter_files_and_merge_cli(tmp_path):
    base = _model()
    base.save_pretrained(tmp_path / "base")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["*.experts", "*.in_proj", "*.o_proj"]))
    _randomise_adapters(model)
    save_adapter(model, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    ids = torch.randint(0, 320, (1, 23))
    with torch.no_grad():
        want = model(ids).logits
    again = NemotronHForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    load_adapter(again, tmp_path / "adapter")
    with torch.no_grad():
        assert (again(ids).logits - want).abs().max() < 1e-6
    assert cli(["merge-lora", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged"),
                "--dtype", "float32"]) == 0
    merged = NemotronHForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert (merged(ids).logits - want).abs().max() < 1e-5


def test_only_adapters_receive_updates():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, LoRAConfig(r=2, alpha=4))
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    ids = torch.randint(0, 320, (2, 12))
    for _ in range(3):
        opt.zero_grad()
        model(ids).logits.logsumexp(-1).mean().backward()
        opt.step()
    for n, p in model.named_parameters():
        if ".lora_" in n:
            continue
        assert p.grad is None and torch.equal(p, before[n]), n
    assert model.backbone.layers[2].mixer.experts.lora_B_up.abs().sum() > 0
