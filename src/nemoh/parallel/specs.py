"""Which parameters tensor / expert parallelism split, and how (each block kind declares its own, model/blocks.py):
one table used by the slicing (tensor_parallel.py,
expert_parallel.py), the layout-independent checkpoints and the gathered Hub export (state_dict.py).

A fused projection is a concatenation of segments (Mamba2's in_proj is [z | x | B | C | dt]); each segment is split
evenly across the group, so rank r holds [z_r | x_r | B_r | C_r | dt_r], the rows its own heads need. `parts` lists
the segment sizes in the canonical (Hub) layout.
"""
from __future__ import annotations

from typing import cast

from torch import nn

from ..model.blocks import ShardSpec, block_kind
from ..model.config import NemotronHConfig
from ..model.model import Block

__all__ = ["ShardSpec", "shard_specs"]


def shard_specs(model: nn.Module) -> dict[str, ShardSpec]:
    """name -> ShardSpec for every parameter that tp or ep splits (the rest are replicated over both)."""
    c = cast(NemotronHConfig, model.config)
    params = dict(model.named_parameters())
    specs: dict[str, ShardSpec] = {}
    for name, m in model.named_modules():
        if isinstance(m, Block):        # each kind says how its mixer's parameters split (model/blocks.py)
            for rel, spec in block_kind(m.kind).shard_specs(m.mixer, c).items():
                if f"{name}.mixer.{rel}" in params:         # optional parameters (biases) may be absent
                    specs[f"{name}.mixer.{rel}"] = spec
    return specs
