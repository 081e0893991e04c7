"""LoRA on a MoE config, experts included: merge equality, adapter save/load, only adapters train, no double
application. PEFT interoperability is in test_peft.py."""
import pytest
import torch

from nemoh import NemotronHForCausalLM, get_preset
from nemoh.cli.main import main as cli
from nemoh.lora import (
    LoRAConfig,
    apply_lora,
    load_adapter,
    lora_parameters,
    merge_lora,
    save_adapter,
)


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
    assert any(n.endswith("mixer.experts.up_proj") for n in names) and any(n.endswith("q_proj") for n in names)
    _randomise_adapters(model)
    ids = torch.randint(0, 320, (2, 19))
    with torch.no_grad():
        with_adapter = model(ids).logits
        expert_delta = model.backbone.layers[2].mixer.experts.lora["up_proj"].lora_B.abs().sum()
        merge_lora(model)
        merged = model(ids).logits
    assert expert_delta > 0
    assert (merged - with_adapter).abs().max() < 1e-5
    assert not any(".lora_" in n for n, _ in model.named_parameters())


def test_adapter_files_and_merge_cli(tmp_path):
    base = _model()
    base.save_pretrained(tmp_path / "base")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    # Mamba out_proj and the MTP head's modules: nemoh round-trips them, PEFT on transformers cannot take them
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["*.experts", "*.in_proj", "*.o_proj", "*.out_proj"]))
    _randomise_adapters(model)
    with pytest.warns(UserWarning, match="loads in nemoh only"):
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
    assert model.backbone.layers[2].mixer.experts.lora["up_proj"].lora_B.abs().sum() > 0


def test_a_second_adapter_is_refused_and_the_first_still_applies_once(tmp_path):
    """Regression: apply_lora (or load_adapter) on an adapted model used to hook every linear twice."""
    model = _model()
    apply_lora(model, LoRAConfig(r=2, alpha=4))
    _randomise_adapters(model)
    save_adapter(model, tmp_path / "adapter")
    ids = torch.randint(0, 320, (1, 9))
    with torch.no_grad():
        want = model(ids).logits
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig(r=2, alpha=4))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        load_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)  # bit-identical: nothing was added by the refused calls
    merge_lora(model)  # after a merge the model takes a new adapter
    again = apply_lora(model, LoRAConfig(r=2, alpha=4, targets=["backbone.*.q_proj"]))
    assert again == ["backbone.layers.1.mixer.q_proj"]


def _write_nemoh_v1(model, path):
    """An adapter as nemoh wrote them before the PEFT format (the layout of the removed lora/lora.py): keys under
    nemoh's names, routed experts stacked (E, r, in) / (E, out, r), fnmatch globs and nemoh fields in the config."""
    import json

    from safetensors.torch import save_file

    from nemoh.lora import adapted
    tensors = {}
    for target, f in adapted(model).items():
        tensors[f"base_model.model.{target}.lora_A.weight"] = f.lora_A.detach().contiguous()
        tensors[f"base_model.model.{target}.lora_B.weight"] = f.lora_B.detach().contiguous()
    path.mkdir()
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8.0, "target_modules": ["*.q_proj", "*.experts", "*.out_proj"],
        "adapted_modules": sorted({t.rsplit(".", 1)[0] for t in adapted(model)}), "base_model_name_or_path": None,
        "bias": "none",
        "nemoh_expert_layout": "stacked: experts.{up,down}_proj.lora_A.weight (E, r, in), lora_B.weight (E, out, r)"}))


def test_adapters_in_nemohs_earlier_format_still_load_and_convert(tmp_path):
    model = _model()
    apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["*.q_proj", "*.experts", "*.out_proj"]))
    _randomise_adapters(model)
    _write_nemoh_v1(model, tmp_path / "v1")
    ids = torch.randint(0, 320, (1, 11))
    with torch.no_grad():
        want = model(ids).logits
    again = _model()
    load_adapter(again, tmp_path / "v1")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, want)  # the same factors, the same float32 ops: bit-identical
    with pytest.warns(UserWarning, match="loads in nemoh only"):  # MTP and Mamba out_proj were adapted
        save_adapter(again, tmp_path / "converted")  # load + save is the converter to PEFT's format
    from safetensors.torch import load_file
    keys = load_file(tmp_path / "converted" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.2.mixer.experts.base_layer.lora_A.weight" in keys
    third = _model()
    load_adapter(third, tmp_path / "converted")
    with torch.no_grad():
        assert torch.equal(third(ids).logits, want)
