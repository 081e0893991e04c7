import torch
import torch.nn as nn


class Model(nn.Module):
    """ReLU over inputs drawn from [0, 1): a copy is right on every input get_inputs ever draws."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def get_inputs():
    return [torch.rand(64, 1024)]


def get_init_inputs():
    return []
