# problem: 1_SiLU
# expect: runtime_error
# Grows memory without bound, a gigabyte at a time (touched, so it is really used).
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        hoard = []
        while True:
            hoard.append(torch.ones(1 << 28))
