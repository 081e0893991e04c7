"""Small building blocks shared by the mixers: RMSNorm, the group-wise gated RMSNorm, the relu² MLP."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
