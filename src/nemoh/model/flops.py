"""Model FLOPs per token, for MFU estimates (the bench scripts and the trainers share it)."""
from __future__ import annotations

from .blocks import block_kind
from .config import NemotronHConfig


def flops_per_token(c: NemotronHConfig, seq: int) -> float:
    """Forward matmul FLOPs per token (2 per MAC), active experts only, attention scores included: each block
    kind's own count (model/blocks.py) plus the LM head."""
    macs = sum(block_kind(kind).macs_per_token(c, seq) for kind in c.block_types)
    return 2 * (macs + c.hidden_size * c.vocab_size)
