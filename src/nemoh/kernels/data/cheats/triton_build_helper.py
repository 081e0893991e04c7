# problem: 1_SiLU
# expect: integrity_violation
# runtime: integrity_violation
# Compiles native code through Triton's own build helper (a C compiler in a subprocess, called from Triton's
# frames), computes SiLU there through raw pointers, and copies the result with a Triton kernel.
import torch
import torch.nn as nn
import triton
import triton.language as tl
from triton.runtime.build import compile_module_from_src

SRC = r"""
#include <Python.h>
#include <math.h>
static PyObject* silu(PyObject* self, PyObject* args) {
    unsigned long long src, dst; long n;
    if (!PyArg_ParseTuple(args, "KKl", &src, &dst, &n)) return NULL;
    float* x = (float*)src; float* y = (float*)dst;
    for (long i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
    Py_RETURN_NONE;
}
static PyMethodDef M[] = {{"silu", silu, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "native_silu", NULL, -1, M};
PyMODINIT_FUNC PyInit_native_silu(void) { return PyModule_Create(&D); }
"""


@triton.jit
def copy_kernel(src_ptr, x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(out_ptr + offs, tl.load(src_ptr + offs, mask=offs < n) + x * 0, mask=offs < n)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.native = compile_module_from_src(SRC, "native_silu")

    def forward(self, x):
        x = x.contiguous()
        src = torch.empty_like(x)
        self.native.silu(x.data_ptr(), src.data_ptr(), x.numel())
        out = torch.empty_like(x)
        copy_kernel[(triton.cdiv(x.numel(), 4096),)](src, x, out, x.numel(), BLOCK=4096)
        return out
