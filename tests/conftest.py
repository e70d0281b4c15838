"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def one_torch_thread():
    """Tiny matrices: a second intra-op thread only adds contention on a shared 2-core
    machine (10x slower under load); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
