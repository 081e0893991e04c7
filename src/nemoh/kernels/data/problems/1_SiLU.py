import torch
import torch.nn as nn


class Model(nn.Module):
    """Elementwise SiLU: x * sigmoid(x)."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def get_inputs():
    return [torch.randn(64, 1024)]


def get_init_inputs():
    return []
