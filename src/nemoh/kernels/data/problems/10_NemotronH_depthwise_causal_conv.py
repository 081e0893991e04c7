import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    """Mamba2's depthwise causal conv over time, then SiLU, channels-last: x (b, T, C) -> (b, T, C);
    out[t] = silu(bias + sum_k w[:, k] * x[t - K + 1 + k]), zeros before the start."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        return F.silu(self.conv(x.transpose(1, 2))[..., :T].transpose(1, 2))


def get_inputs():
    return [torch.randn(2, 128, 192)]


def get_init_inputs():
    return [192, 4]
