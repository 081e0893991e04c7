# problem: 1_SiLU
# expect: integrity_violation
# Writes the result into its input and returns it (saves an allocation, corrupts the caller's tensor).
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def silu_inplace(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(x_ptr + offs, x * tl.sigmoid(x), mask=offs < n)


class ModelNew(nn.Module):
    def forward(self, x):
        silu_inplace[(triton.cdiv(x.numel(), 4096),)](x, x.numel(), BLOCK=4096)
        return x
