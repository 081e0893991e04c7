import torch
import torch.nn as nn


class Model(nn.Module):
    """A fused pair: relu(x @ W^T + b), a linear layer followed by ReLU."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def get_inputs():
    return [torch.randn(128, 256)]


def get_init_inputs():
    return [256, 128]
