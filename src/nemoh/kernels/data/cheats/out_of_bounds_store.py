# problem: 1_SiLU
# expect: runtime_error
# Stores far outside its output buffer: the interpreter process crashes.
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def oob_kernel(out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK).to(tl.int64) * 100000000 + 2000000000
    tl.store(out_ptr + offs, tl.zeros((BLOCK,), dtype=tl.float32))


class ModelNew(nn.Module):
    def forward(self, x):
        out = torch.empty_like(x)
        oob_kernel[(1,)](out, BLOCK=16)
        return out
