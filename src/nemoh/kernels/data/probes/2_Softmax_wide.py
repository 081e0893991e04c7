import torch
import torch.nn as nn


class Model(nn.Module):
    """Softmax over rows of 65536 values in [0, 1): every output is below 3e-5, under an absolute tolerance of 1e-4."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)


def get_inputs():
    return [torch.rand(2, 65536)]


def get_init_inputs():
    return []
