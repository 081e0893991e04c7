"""Which parameters tensor / expert parallelism split, and how: one table used by the slicing (tensor_parallel.py,
expert_parallel.py), the layout-independent checkpoints and the gathered Hub export (state_dict.py).

A fused projection is a concatenation of segments (Mamba2's in_proj is [z | x | B | C | dt]); each segment is split
evenly across the group, so rank r holds [z_r | x_r | B_r | C_r | dt_r], the rows its own heads need. `parts` lists
the segment sizes in the canonical (Hub) layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..model.attention import Attention
from ..model.config import NemotronHConfig
from ..model.layers import MLP
from ..model.mamba import Mamba2Mixer
from ..model.moe import Experts


@dataclass(frozen=True)
class ShardSpec:
    group: str                 # "tp" or "ep": the mesh dimension that splits it
    dim: int                   # the split dimension
    parts: tuple[int, ...]     # canonical segment sizes along `dim`; each is split evenly across the group

    def local(self, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        """Rank `rank`'s slice of the canonical tensor: its share of every segment, concatenated."""
        if size == 1:
            return full
        segs = full.split(list(self.parts), self.dim)
        return torch.cat([s.chunk(size, self.dim)[rank] for s in segs], self.dim).contiguous()

    def local_parts(self, size: int) -> list[int]:
        return [p // size for p in self.parts]


def shard_specs(model: nn.Module) -> dict[str, ShardSpec]:
    """name -> ShardSpec for every parameter that tp or ep splits (the rest are replicated over both)."""
    c = cast(NemotronHConfig, model.config)
    I, H, GN = c.mamba_intermediate, c.mamba_num_heads, c.n_groups * c.ssm_state_size
    specs: dict[str, ShardSpec] = {}

    def add(prefix: str, attr: str, spec: ShardSpec, module: nn.Module) -> None:
        if getattr(module, attr, None) is not None:
            specs[f"{prefix}.{attr}"] = spec

    for name, m in model.named_modules():
        if isinstance(m, Attention):
            q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
            for proj, size in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                add(f"{name}.{proj}", "weight", ShardSpec("tp", 0, (size,)), getattr(m, proj))
                add(f"{name}.{proj}", "bias", ShardSpec("tp", 0, (size,)), getattr(m, proj))
            add(f"{name}.o_proj", "weight", ShardSpec("tp", 1, (q,)), m.o_proj)
        elif isinstance(m, Mamba2Mixer):
            fused = ShardSpec("tp", 0, (I, I, GN, GN, H))                  # z, x, B, C, dt
            conv = ShardSpec("tp", 0, (I, GN, GN))                         # x, B, C
            add(f"{name}.in_proj", "weight", fused, m.in_proj)
            add(f"{name}.in_proj", "bias", fused, m.in_proj)
            add(f"{name}.conv1d", "weight", conv, m.conv1d)
            add(f"{name}.conv1d", "bias", conv, m.conv1d)
            for p in ("A_log", "D", "dt_bias"):
                add(name, p, ShardSpec("tp", 0, (H,)), m)
            add(f"{name}.norm", "weight", ShardSpec("tp", 0, (I,)), m.norm)
            add(f"{name}.out_proj", "weight", ShardSpec("tp", 1, (I,)), m.out_proj)
        elif isinstance(m, MLP):
            inter = m.up_proj.out_features
            add(f"{name}.up_proj", "weight", ShardSpec("tp", 0, (inter,)), m.up_proj)
            add(f"{name}.up_proj", "bias", ShardSpec("tp", 0, (inter,)), m.up_proj)
            add(f"{name}.down_proj", "weight", ShardSpec("tp", 1, (inter,)), m.down_proj)
        elif isinstance(m, Experts):
            for p in ("up_proj", "down_proj"):
                add(name, p, ShardSpec("ep", 0, (c.n_routed_experts,)), m)
    return specs
