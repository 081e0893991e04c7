import torch
import torch.nn as nn


class Model(nn.Module):
    """nemotron_h's dense MLP (also the MoE's shared expert): down(relu(up(x))^2), no biases."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.square(torch.relu(self.up_proj(x))))


def get_inputs():
    return [torch.randn(64, 128)]


def get_init_inputs():
    return [128, 256]
