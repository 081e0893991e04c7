import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    """Mamba2's output norm in nemotron_h: h = y * silu(z), RMS-normalised per group of dim/groups channels, times
    a weight, computed in fp32."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim) * 0.1 + 1.0)
        self.groups, self.eps = groups, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = y.float() * F.silu(z.float())
        h = h.unflatten(-1, (self.groups, -1))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.flatten(-2)


def get_inputs():
    return [torch.randn(64, 256), torch.randn(64, 256)]


def get_init_inputs():
    return [256, 4]
