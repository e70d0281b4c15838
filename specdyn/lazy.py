"""Packages whose public names are imported on first use (PEP 562).

A package ``__init__`` names, for each public name, the module that defines it; the
module is imported when the name is first looked up (``from specdyn.analysis import
analyze`` or ``specdyn.analysis.analyze``), not when the package is. So ``import
specdyn``, the command line's start and the paths that only read a store or draw
(``plot``, ``runs``, ``info``, ``export``) never import torch (≈1 s) or matplotlib.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose names load on first use.

    package: the package's ``__name__``. homes: public name → its module relative to the
    package (``"._run"``), or ``"._module:attr"`` when the name is an alias of ``attr``.
    A name, once loaded, is set on the package, so later look-ups are plain attributes.
    """

    def __getattr__(name: str) -> object:
        home = homes.get(name)
        if home is None:
            # a subpackage or module, as an eager ``__init__`` would have made it an
            # attribute (``specdyn.pythia.CATALOG`` after ``import specdyn``)
            if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attr = home.partition(":")
        value = getattr(importlib.import_module(module_name, package), attr or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
