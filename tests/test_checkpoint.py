"""Hub-layout loading and saving: sharded files, FP8 dequantisation, clear errors, atomic writes."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemoh import NemotronHForCausalLM
from nemoh.checkpoint import io as ckpt_io
from reference import save_reference


def _quantise_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = t.abs().max().float() / 448.0
    return (t.float() / scale).to(torch.float8_e4m3fn), scale.reshape(())


def test_fp8_checkpoint_loads_dequantised(tmp_path):
    """ModelOpt per-tensor FP8 (weight + weight_scale + input_scale) on experts and Mamba projections, like Super."""
    save_reference(tmp_path / "ref", "MEM*E", moe_latent_size=16)
    sd = load_file(tmp_path / "ref" / "model.safetensors")
    fp8, deq = {}, {}
    for k, t in sd.items():
        if k.endswith(("up_proj.weight", "down_proj.weight", "in_proj.weight", "out_proj.weight")):
            q, s = _quantise_fp8(t)
            fp8[k], fp8[k[:-len("weight")] + "weight_scale"] = q, s
            fp8[k[:-len("weight")] + "input_scale"] = torch.tensor(1.0)
            deq[k] = q.float() * s
        else:
            fp8[k] = deq[k] = t
    fp8_dir = tmp_path / "fp8"
    fp8_dir.mkdir()
    save_file(fp8, fp8_dir / "model.safetensors")
    cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8"}
    (fp8_dir / "config.json").write_text(json.dumps(cfg))

    model = NemotronHForCausalLM.from_pretrained(fp8_dir, dtype=torch.float32)
    w = model.backbone.layers[1].mixer.experts.up_proj[3]
    assert torch.equal(w, deq["backbone.layers.1.mixer.experts.3.up_proj.weight"])
    assert torch.equal(model.backbone.layers[0].mixer.in_proj.weight, deq["backbone.layers.0.mixer.in_proj.weight"])
    assert not torch.equal(w, sd["backbone.layers.1.mixer.experts.3.up_proj.weight"])  # really quantised

    # logits equal the transformers reference run on the dequantised copy
    deq_dir = tmp_path / "deq"
    deq_dir.mkdir()
    save_file(deq, deq_dir / "model.safetensors")
    (deq_dir / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    from transformers import NemotronHForCausalLM as Ref
    ref = Ref.from_pretrained(deq_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, 96, (2, 11))
    ours = NemotronHForCausalLM.from_pretrained(fp8_dir, dtype=torch.float32, mamba_dt_clamp=True)
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max() < 1e-4
    # saved back as plain weights, without the quantisation config
    ours.save_pretrained(tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())


def test_save_layout_matches_hub_names(tmp_path):
    save_reference(tmp_path / "ref", "M*-E")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32)
    model.save_pretrained(tmp_path / "out")
    theirs = load_file(tmp_path / "ref" / "model.safetensors")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    assert set(theirs) == set(ours)
    assert all(theirs[k].shape == ours[k].shape and torch.equal(theirs[k], ours[k]) for k in theirs)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["hybrid_override_pattern"] == "M*-E" and cfg["layers_block_type"][0] == "linear_attention"


def test_bf16_save_and_shards(tmp_path):
    save_reference(tmp_path / "ref", "M*-E")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "out", max_shard_size="10KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2
    back = NemotronHForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), n
    assert back.backbone.layers[0].mixer.A_log.dtype == torch.float32


def test_missing_unexpected_misshaped_are_listed(tmp_path):
    save_reference(tmp_path / "ref", "M*-E")
    sd = load_file(tmp_path / "ref" / "model.safetensors")
    del sd["backbone.layers.3.mixer.experts.5.down_proj.weight"]
    del sd["backbone.layers.1.mixer.q_proj.weight"]
    sd["backbone.layers.9.mixer.bogus.weight"] = torch.zeros(2)
    sd["backbone.layers.2.mixer.up_proj.weight"] = torch.zeros(3, 3)
    save_file(sd, tmp_path / "ref" / "model.safetensors")
    with pytest.raises(ValueError) as e:
        NemotronHForCausalLM.from_pretrained(tmp_path / "ref")
    msg = str(e.value)
    for needle in ("missing tensors (2)", "experts.5.down_proj.weight", "layers.1.mixer.q_proj.weight",
                   "unexpected tensors (1)", "bogus", "mis-shaped tensors (1)", "layers.2.mixer.up_proj.weight"):
        assert needle in msg, needle


def test_no_weights_is_a_clear_error(tmp_path):
    save_reference(tmp_path / "ref", "M")
    (tmp_path / "ref" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        NemotronHForCausalLM.from_pretrained(tmp_path / "ref")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_reference(tmp_path / "ref", "M*")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32)
    model.save_pretrained(tmp_path / "out")
    before = load_file(tmp_path / "out" / "model.safetensors")
    calls = []

    def dying_save(tensors, filename, metadata=None):  # the process "dies" after writing one shard
        if calls:
            raise KeyboardInterrupt("killed during save")
        calls.append(filename)
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt_io, "save_file", dying_save)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "out", max_shard_size="5KB")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]  # no temp dirs left behind
