"""The presets equal the published config.json files, field by field, for every field nemoh models."""
import dataclasses
import json

import pytest

from nemoh.model.config import NemotronHConfig
from nemoh.model.presets import get_preset

# nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 config.json as published (fields that are not architecture -- dropout,
# rope, cache flags, transformers_version -- left out)
NANO_30B = {
    "architectures": ["NemotronHForCausalLM"], "attention_bias": False, "bos_token_id": 1, "chunk_size": 128,
    "conv_kernel": 4, "eos_token_id": 2, "expand": 2, "head_dim": 128, "hidden_size": 2688,
    "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME", "initializer_range": 0.02,
    "intermediate_size": 1856, "layer_norm_epsilon": 1e-05, "mamba_head_dim": 64, "mamba_hidden_act": "silu",
    "mamba_num_heads": 64, "mamba_proj_bias": False, "mlp_bias": False, "mlp_hidden_act": "relu2",
    "model_type": "nemotron_h", "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712,
    "n_group": 1, "n_groups": 8, "n_routed_experts": 128, "norm_topk_prob": True, "num_attention_heads": 32,
    "num_experts_per_tok": 6, "num_hidden_layers": 52, "num_key_value_heads": 2, "pad_token_id": 0,
    "routed_scaling_factor": 2.5, "ssm_state_size": 128, "tie_word_embeddings": False, "time_step_floor": 0.0001,
    "time_step_max": 0.1, "time_step_min": 0.001, "topk_group": 1, "use_conv_bias": True, "vocab_size": 131072,
}
# the other two from the architecture sheet's table of published values (docs/nemotron_h.md)
NANO_4B = {
    "hidden_size": 3136, "hybrid_override_pattern": "M-M-M-MM-M-M*-M-M*-M-M-M*-M-M-MM*-MMM-M-M-",
    "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12544,
    "mamba_num_heads": 96, "mamba_head_dim": 80, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4,
    "chunk_size": 256, "vocab_size": 131072, "eos_token_id": 2, "num_hidden_layers": 42,
}
SUPER = {
    "hidden_size": 4096, "num_hidden_layers": 88,
    "hybrid_override_pattern":
        "MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*EMEMEMEME",
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "mamba_num_heads": 128,
    "mamba_head_dim": 64, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4, "chunk_size": 128,
    "n_routed_experts": 512, "num_experts_per_tok": 22, "moe_intermediate_size": 2688,
    "moe_shared_expert_intermediate_size": 5376, "moe_latent_size": 1024, "n_group": 1, "topk_group": 1,
    "routed_scaling_factor": 5.0, "vocab_size": 131072, "num_nextn_predict_layers": 1, "eos_token_id": [2, 11],
}


def test_nano_30b_preset_is_the_published_config_field_by_field():
    preset = get_preset("nano-30b-a3b")
    published = NemotronHConfig.from_dict(NANO_30B)
    for f in dataclasses.fields(NemotronHConfig):
        if f.name != "extra":
            assert getattr(preset, f.name) == getattr(published, f.name), f.name
    saved = json.loads(json.dumps(preset.to_dict()))
    for key, value in NANO_30B.items():
        assert saved[key] == value, key


@pytest.mark.parametrize("name,published", [("nano-4b", NANO_4B), ("super-120b-a12b", SUPER)])
def test_presets_match_the_published_values(name, published):
    saved = json.loads(json.dumps(get_preset(name).to_dict()))
    for key, value in published.items():
        assert saved[key] == value, key
