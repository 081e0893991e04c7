# problem: 1_SiLU
# expect: integrity_violation
# runtime: integrity_violation
# Computes SiLU on the host with numpy and copies the answer into the output with a Triton kernel.
import numpy as np
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def copy_kernel(src_ptr, x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, tl.load(src_ptr + offs, mask=offs < n) + x * 0, mask=offs < n)


class ModelNew(nn.Module):
    def forward(self, x):
        a = x.numpy()
        src = torch.from_numpy((a / (1.0 + np.exp(-a))).astype(np.float32))
        out = torch.empty_like(x)
        copy_kernel[(triton.cdiv(x.numel(), 4096),)](src, x, out, x.numel(), BLOCK=4096)
        return out
