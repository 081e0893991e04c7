# problem: 1_SiLU
# expect: integrity_violation
# Opens a network connection (here to a local port; the test listens there and checks nothing arrives).
import os
import socket
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        port = int(os.environ.get("NEMOH_TEST_PORT", "9"))
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"exfiltrate")
        return x
