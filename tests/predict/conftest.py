"""The predict tests work on small tensors: one intra-op thread avoids OpenMP contention
(two xdist workers on two cores); the previous setting is restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
