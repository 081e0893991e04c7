# problem: 3_LeakyReLU
# expect: correct
# flag: init argument 0
# Right for the slope get_init_inputs passes (0.05, hard-coded), wrong for any other: passes, flagged.
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def leaky_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, tl.where(x >= 0, x, x * 0.05), mask=offs < n)


class ModelNew(nn.Module):
    def __init__(self, negative_slope):
        super().__init__()

    def forward(self, x):
        out = torch.empty_like(x)
        leaky_kernel[(triton.cdiv(x.numel(), 4096),)](x, out, x.numel(), BLOCK=4096)
        return out
