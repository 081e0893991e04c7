# problem: 1_SiLU
# expect: integrity_violation
# Writes a file outside its sandbox directory at import time.
import os
import torch.nn as nn

with open(os.environ.get("NEMOH_ESCAPE_PATH", "/tmp/nemoh-escape.txt"), "w") as f:
    f.write("escaped")


class ModelNew(nn.Module):
    def forward(self, x):
        return x
