# problem: 1_SiLU
# expect: integrity_violation
# Inherits the reference (copied in) and launches a token kernel so that a launch is seen.
import torch
import torch.nn as nn
import triton
import triton.language as tl


class Model(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


@triton.jit
def noop_kernel(x_ptr):
    pass


class ModelNew(Model):
    def forward(self, x):
        noop_kernel[(1,)](x)
        return super().forward(x)
