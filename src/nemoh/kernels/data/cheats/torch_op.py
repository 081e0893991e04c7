# problem: 1_SiLU
# expect: integrity_violation
# Calls the torch op instead of writing a kernel.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.nn.functional.silu(x)
