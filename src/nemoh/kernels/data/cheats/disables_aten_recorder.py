# problem: 4_Matmul
# expect: integrity_violation
# runtime: integrity_violation
# Switches off the dispatch modes (so the ATen recorder sees nothing), calls torch.matmul, then copies the result
# with a Triton kernel so that the output is "written by a kernel".
import torch
import torch.nn as nn
import triton
import triton.language as tl
from torch.utils._python_dispatch import _disable_current_modes


@triton.jit
def copy_kernel(src_ptr, a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    touch = tl.load(a_ptr) * 0 + tl.load(b_ptr) * 0
    tl.store(out_ptr + offs, tl.load(src_ptr + offs, mask=offs < n) + touch, mask=offs < n)


class ModelNew(nn.Module):
    def forward(self, a, b):
        with _disable_current_modes():
            c = torch.matmul(a, b)
        out = torch.empty_like(c)
        copy_kernel[(triton.cdiv(c.numel(), 4096),)](c, a, b, out, c.numel(), BLOCK=4096)
        return out
