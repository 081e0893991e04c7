import json

import pytest

from nemoh.model.config import NemotronHConfig, parse_pattern
from nemoh.model.presets import PRESETS, get_preset


def test_pattern_parser_keeps_all_four_block_types():
    assert parse_pattern("M*-E") == ["mamba", "attention", "mlp", "moe"]
    cfg = NemotronHConfig.from_dict({"hybrid_override_pattern": "M-M*E-"})
    assert cfg.block_types == ["mamba", "mlp", "mamba", "attention", "moe", "mlp"]
    assert cfg.num_hidden_layers == 6 and cfg.hybrid_override_pattern == "M-M*E-"


def test_list_form_and_alias():
    cfg = NemotronHConfig.from_dict({"layer_types": ["linear_attention", "full_attention", "mlp", "moe"]})
    assert cfg.hybrid_override_pattern == "M*-E"
    cfg = NemotronHConfig.from_dict({"layers_block_type": ["mamba", "attention"]})  # legacy list names
    assert cfg.hybrid_override_pattern == "M*"


def test_legacy_mamba_aliases_are_read():
    raw = {"hybrid_override_pattern": "M", "mamba_num_heads": 8, "mamba_n_groups": 4, "mamba_d_conv": 3,
           "mamba_expand": 1, "mamba_dt_min": 0.01, "mamba_dt_max": 0.2, "mamba_dt_limit": [0.0, 5.0],
           "mamba_dt_init_floor": 0.001, "mamba_conv_bias": False, "mamba_chunk_size": 64}
    c = NemotronHConfig.from_dict(raw)
    assert (c.n_groups, c.conv_kernel, c.expand, c.chunk_size, c.use_conv_bias) == (4, 3, 1, 64, False)
    assert (c.time_step_min, c.time_step_max, c.time_step_floor, c.time_step_limit) == (0.01, 0.2, 0.001, (0.0, 5.0))


def test_moe_mtp_fields_and_roundtrip():
    raw = {"hybrid_override_pattern": "ME", "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4,
           "topk_group": 2, "norm_topk_prob": False, "routed_scaling_factor": 5.0, "moe_latent_size": 64,
           "num_nextn_predict_layers": 1, "mtp_hybrid_override_pattern": "*E", "quantization_config": {"x": 1}}
    c = NemotronHConfig.from_dict(raw)
    assert (c.n_group, c.topk_group, c.norm_topk_prob, c.routed_scaling_factor, c.moe_latent_size) == \
        (4, 2, False, 5.0, 64)
    assert c.mtp_block_types == ["attention", "moe"]
    again = NemotronHConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again.to_dict() == c.to_dict() and again.block_types == c.block_types
    assert again.extra["quantization_config"] == {"x": 1}


@pytest.mark.parametrize("raw, field", [
    ({"hybrid_override_pattern": "M*X"}, "hybrid_override_pattern"),
    ({"layers_block_type": ["mamba", "conv"]}, "layers_block_type"),
    ({"hybrid_override_pattern": "M", "mamba_num_heads": 6, "n_groups": 4}, "mamba_num_heads"),
    ({"hybrid_override_pattern": "*", "num_attention_heads": 6, "num_key_value_heads": 4}, "num_attention_heads"),
    ({"hybrid_override_pattern": "E", "n_routed_experts": 6, "n_group": 4}, "n_routed_experts"),
    ({"hybrid_override_pattern": "E", "n_routed_experts": 8, "n_group": 2, "topk_group": 3}, "topk_group"),
    ({"hybrid_override_pattern": "E", "n_routed_experts": 8, "n_group": 4, "topk_group": 1,
      "num_experts_per_tok": 3}, "num_experts_per_tok"),
    ({"hybrid_override_pattern": "M*", "num_hidden_layers": 3}, "num_hidden_layers"),
    ({"hybrid_override_pattern": "-", "mlp_hidden_act": "gelu"}, "mlp_hidden_act"),
    ({"model_type": "llama", "hybrid_override_pattern": "M"}, "model_type"),
])
def test_bad_values_name_the_field(raw, field):
    with pytest.raises(ValueError, match=field):
        NemotronHConfig.from_dict(raw)


def test_bad_file_names_the_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"hybrid_override_pattern": "MQ"}))
    with pytest.raises(ValueError, match=str(p)):
        NemotronHConfig.from_pretrained(tmp_path)


def test_presets_match_the_published_configs():
    nano = get_preset("nano-30b-a3b")
    assert nano.num_hidden_layers == 52 and nano.routed_scaling_factor == 2.5 and nano.n_routed_experts == 128
    sup = get_preset("super-120b-a12b")
    assert sup.num_hidden_layers == 88 and sup.moe_latent_size == 1024 and sup.eos_token_ids == [2, 11]
    dense = get_preset("nano-4b")
    assert dense.num_hidden_layers == 42 and "moe" not in dense.block_types and dense.mamba_intermediate == 96 * 80
    assert set(PRESETS) >= {"nano-4b", "nano-30b-a3b", "super-120b-a12b", "tiny"}
