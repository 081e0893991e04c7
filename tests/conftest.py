import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    # one intra-op thread per xdist worker (the workers already fill the cores); two when run serially
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
