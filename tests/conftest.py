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


@pytest.fixture
def computed(monkeypatch):
    """The methods `SpectrumEngine` computes, in order (a list the test may clear)."""
    from specdyn.engine import SpectrumEngine

    calls: list[str] = []
    real = SpectrumEngine._compute

    def compute(engine, method, items, chunk, device):
        calls.append(method)
        return real(engine, method, items, chunk, device)

    monkeypatch.setattr(SpectrumEngine, "_compute", compute)
    return calls
