"""Fixtures shared by the pythia tests."""

from __future__ import annotations

import pytest
from _fake_hub import FakeHub


@pytest.fixture
def hub():
    """A loopback FakeHub (tests/_fake_hub.py), empty; closed after the test."""
    with FakeHub() as h:
        yield h
