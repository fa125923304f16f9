import os

import pytest
import torch

# respect OMP_NUM_THREADS when set (a busy machine); otherwise use at most two threads
if not os.environ.get("OMP_NUM_THREADS"):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny networks gain nothing from threads; two threads on a busy 2-core
    machine run ~50x slower); the previous setting is restored after it.  Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
