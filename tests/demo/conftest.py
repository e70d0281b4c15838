"""The quick grokking demo, trained once per session for both demo test modules."""

from __future__ import annotations

import pytest

from specdyn.demo import grokking_demo


@pytest.fixture(scope="session")
def quick_demos(tmp_path_factory):
    """(home, with weight decay, without): `grokking_demo(quick=True)` of both settings,
    each a real GROKKING_QUICK training (≈ 8 s) with its analysis and figure."""
    home = tmp_path_factory.mktemp("demo-home")
    with_wd = grokking_demo(home=home, quick=True)
    without = grokking_demo(home=home, quick=True, weight_decay=False)
    assert with_wd.training is not None and without.training is not None  # trained, not reused
    return home, with_wd, without
