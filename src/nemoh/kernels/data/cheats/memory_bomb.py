# problem: 1_SiLU
# expect: runtime_error
# Grows memory without bound.
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        hoard = []
        while True:
            hoard.append(bytearray(256 << 20))
