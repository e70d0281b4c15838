"""The fixture generator script, imported as a module by the tests that need its tasks."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@functools.cache
def make_fixtures():
    """fixtures/make_fixtures.py (not a package) imported once, for its tasks and models."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
