"""Small building blocks shared by the mixers: RMSNorm, the group-wise gated RMSNorm, the relu² MLP."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import BlockKind, ShardSpec, ShardSpecs, TPWiring, register_block_kind

if TYPE_CHECKING:
    from .config import NemotronHConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32; the weight multiplies before the cast back (as the reference does)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(x.dtype)


def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, groups: int, eps: float, out_dtype: torch.dtype) -> Tensor:
    """Mamba2's output norm: y * silu(z), normalised per group of `dim / groups` channels, times weight, in fp32.
    The gate comes before the norm (norm_before_gate=False in mamba_ssm terms)."""
    h = y.float() * F.silu(z.float())
    h = h.unflatten(-1, (groups, -1))                                      # (..., G, I/G)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * h.flatten(-2)).to(out_dtype)


class GatedRMSNorm(nn.Module):
    """Holds the gated norm's weight (Hub name `mixer.norm.weight`); the math is `gated_rms_norm`."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.groups, self.eps = groups, eps


def relu2(x: Tensor) -> Tensor:
    return torch.square(F.relu(x))


class MLP(nn.Module):
    """Dense relu² MLP: down(relu(up(x))²). Also the MoE's shared expert."""

    def __init__(self, dim: int, inter: int, bias: bool = False):
        super().__init__()
        self.up_proj = nn.Linear(dim, inter, bias=bias)
        self.down_proj = nn.Linear(inter, dim, bias=bias)

    def forward(self, x: Tensor, **_: object) -> Tensor:
        return self.down_proj(relu2(self.up_proj(x)))


# ---- the dense MLP block kind (`-`): see model/blocks.py -------------------------------------------------------
def _mlp_mixer(c: NemotronHConfig, layer_idx: int) -> MLP:
    return MLP(c.hidden_size, c.intermediate_size, c.mlp_bias)


def _mlp_macs(c: NemotronHConfig, seq: int) -> float:
    return 2 * c.hidden_size * c.intermediate_size


def mlp_specs(m: nn.Module, c: NemotronHConfig) -> ShardSpecs:
    """Column-parallel up, row-parallel down (also the MoE's shared expert)."""
    assert isinstance(m, MLP)
    inter = m.up_proj.out_features
    return {"up_proj.weight": ShardSpec("tp", 0, (inter,)), "up_proj.bias": ShardSpec("tp", 0, (inter,)),
            "down_proj.weight": ShardSpec("tp", 1, (inter,))}


def mlp_tp_narrow(m: nn.Module, size: int) -> TPWiring:
    assert isinstance(m, MLP)
    return [(m, m.down_proj)]


MLP_KIND = register_block_kind(BlockKind(
    name="mlp", char="-", hub_names=("mlp",), mixer=_mlp_mixer, macs_per_token=_mlp_macs,
    shard_specs=mlp_specs, tp_narrow=mlp_tp_narrow))
