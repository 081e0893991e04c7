"""Presets: the three published Nemotron-3 configs (values from their config.json; tests/test_presets.py checks
them field by field against the published values) and tiny debug models."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import NemotronHConfig, parse_pattern

_COMMON: dict[str, Any] = dict(vocab_size=131072, conv_kernel=4, ssm_state_size=128, n_groups=8, mamba_head_dim=64,
               head_dim=128, num_attention_heads=32, num_key_value_heads=2, n_group=1, topk_group=1,
               norm_topk_prob=True, bos_token_id=1, pad_token_id=0)


def nano_4b() -> NemotronHConfig:
    """nvidia/NVIDIA-Nemotron-3-Nano-4B-BF16 (dense hybrid)."""
    return NemotronHConfig(**{**_COMMON,
        "block_types": parse_pattern("M-M-M-MM-M-M*-M-M*-M-M-M*-M-M-MM*-MMM-M-M-"),
        "hidden_size": 3136, "num_attention_heads": 40, "num_key_value_heads": 8,
        "intermediate_size": 12544, "mamba_num_heads": 96, "mamba_head_dim": 80, "chunk_size": 256,
        "eos_token_id": 2})


def nano_30b_a3b() -> NemotronHConfig:
    """nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 (MoE, 128 experts, top-6)."""
    return NemotronHConfig(**{**_COMMON,
        "block_types": parse_pattern("MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"),
        "hidden_size": 2688, "mamba_num_heads": 64, "chunk_size": 128,
        "intermediate_size": 1856,  # as published; unused (no dense MLP layers)
        "n_routed_experts": 128, "num_experts_per_tok": 6, "moe_intermediate_size": 1856,
        "moe_shared_expert_intermediate_size": 3712, "routed_scaling_factor": 2.5, "eos_token_id": 2})


def super_120b_a12b() -> NemotronHConfig:
    """nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-FP8 (latent MoE, 512 experts, top-22, one MTP layer)."""
    return NemotronHConfig(**{**_COMMON,
        "block_types": parse_pattern(
            "MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*EMEMEMEME"),
        "hidden_size": 4096, "mamba_num_heads": 128, "chunk_size": 128,
        "intermediate_size": 21504,  # as published; unused (no dense MLP layers)
        "n_routed_experts": 512, "num_experts_per_tok": 22, "moe_intermediate_size": 2688,
        "moe_shared_expert_intermediate_size": 5376, "moe_latent_size": 1024, "routed_scaling_factor": 5.0,
        "num_nextn_predict_layers": 1, "mtp_block_types": ["attention", "moe"], "eos_token_id": [2, 11]})


def tiny(vocab_size: int = 512) -> NemotronHConfig:
    """All four block types at toy sizes: the CPU debug model used by the demo and the tests."""
    return NemotronHConfig(
        block_types=parse_pattern("M*EM-E"), vocab_size=vocab_size, hidden_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
        mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=16,
        n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=64, n_group=2, topk_group=1, routed_scaling_factor=2.5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_latent(vocab_size: int = 512) -> NemotronHConfig:
    """Tiny Super-shaped model: latent MoE plus one MTP layer."""
    return tiny(vocab_size).replace(moe_latent_size=32, routed_scaling_factor=5.0, num_nextn_predict_layers=1)


PRESETS: dict[str, Callable[[], NemotronHConfig]] = {
    "nano-4b": nano_4b,
    "nano-30b-a3b": nano_30b_a3b,
    "super-120b-a12b": super_120b_a12b,
    "tiny": tiny,
    "tiny-latent": tiny_latent,
}


def get_preset(name: str) -> NemotronHConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
