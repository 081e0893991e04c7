# problem: 1_SiLU
# expect: integrity_violation
# Defines a Triton kernel but never launches it.
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def silu_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, x * tl.sigmoid(x), mask=offs < n)


class ModelNew(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)
