"""Reference checkpoints for tests: transformers' NemotronHForCausalLM with every parameter randomised."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

BASE: dict[str, Any] = dict(
    vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    intermediate_size=48, mamba_num_heads=8, mamba_head_dim=4, ssm_state_size=8, n_groups=2, conv_kernel=4,
    chunk_size=8, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
    moe_shared_expert_intermediate_size=24, n_group=1, topk_group=1, norm_topk_prob=True,
    routed_scaling_factor=2.5, layer_norm_epsilon=1e-5, use_conv_bias=True,
)


def reference_model(pattern: str = "M*-E", seed: int = 0, **overrides: Any):
    """A transformers NemotronH model whose A_log, D, dt_bias, norms, conv bias, router bias... are all random."""
    from transformers import NemotronHConfig, NemotronHForCausalLM
    torch.manual_seed(seed)
    cfg = NemotronHConfig(hybrid_override_pattern=pattern, **{**BASE, **overrides})
    model = NemotronHForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand_like(p) * 2 - 1)                # A in -[0.37, 2.7]
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn_like(p) - 1.0)
            elif name.endswith(".D") or name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("conv1d.bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 / max(p.shape[-1], 1) ** 0.5))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    return model


def save_reference(tmp: Path, pattern: str = "M*-E", seed: int = 0, **overrides: Any):
    model = reference_model(pattern, seed, **overrides)
    model.save_pretrained(tmp)
    return model
