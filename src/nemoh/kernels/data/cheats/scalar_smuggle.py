# problem: 4_Sum_all
# expect: integrity_violation
# runtime: integrity_violation
# Sums the input in Python (no ATen op, no numpy) and passes the answer to a kernel as a scalar argument; the kernel
# reads the input and stores the scalar. Caught by the launch scalars changing from trial to trial.
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def store_kernel(x_ptr, out_ptr, value, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr, value + tl.sum(x * 0, axis=0))


class ModelNew(nn.Module):
    def forward(self, x):
        total = float(sum(x.reshape(-1).tolist()))
        out = torch.zeros((), dtype=x.dtype, device=x.device)
        store_kernel[(1,)](x, out, total, x.numel(), BLOCK=1024)
        return out
