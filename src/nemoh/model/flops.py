"""Model FLOPs per token, for MFU estimates (the bench scripts and the trainers share it)."""
from __future__ import annotations

from .config import NemotronHConfig


def flops_per_token(c: NemotronHConfig, seq: int) -> float:
    """Forward matmul FLOPs per token (2 per MAC), active experts only, attention scores included."""
    D, macs = c.hidden_size, 0.0
    for kind in c.block_types:
        if kind == "mamba":
            macs += D * (c.mamba_intermediate + c.mamba_conv_dim + c.mamba_num_heads) + c.mamba_intermediate * D
            # SSD: intra-chunk C·B and y, chunk states, state output (per token, approximately)
            macs += c.mamba_num_heads * (c.chunk_size * (c.ssm_state_size / (c.mamba_num_heads // c.n_groups)
                                                         + c.mamba_head_dim)
                                         + 2 * c.mamba_head_dim * c.ssm_state_size)
        elif kind == "attention":
            hd = c.head_dim
            macs += D * hd * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
            macs += c.num_attention_heads * hd * seq  # q·k and p·v, causal half of 2*seq
        elif kind == "mlp":
            macs += 2 * D * c.intermediate_size
        elif kind == "moe":
            L = c.moe_input_size
            macs += D * c.n_routed_experts + 2 * D * c.moe_shared_expert_intermediate_size
            macs += c.num_experts_per_tok * 2 * L * c.moe_intermediate_size
            if c.moe_latent_size:
                macs += 2 * D * L
    macs += D * c.vocab_size
    return 2 * macs
