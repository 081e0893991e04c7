# problem: 1_SiLU
# expect: integrity_violation
# Launches a kernel that writes nothing and returns torch.empty as is: whatever the memory held.
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def noop_kernel(x_ptr, n):
    pass


class ModelNew(nn.Module):
    def forward(self, x):
        out = torch.empty_like(x)
        noop_kernel[(1,)](x, x.numel())
        return out
