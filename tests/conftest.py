import os

import pytest
import torch

# respect OMP_NUM_THREADS when set (a busy machine); otherwise use at most two threads
if not os.environ.get("OMP_NUM_THREADS"):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
