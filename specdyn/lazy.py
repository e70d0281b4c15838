"""Packages whose public names are imported on first use (PEP 562).

A package ``__init__`` imports its public names under ``if TYPE_CHECKING:`` (what static
tools and readers see) and ends with ``__getattr__, __dir__ = lazy_exports(__name__)``:
those imports are read from its source, and each name's module is imported when the name
is first looked up (``from specdyn.analysis import analyze`` or
``specdyn.analysis.analyze``), not when the package is. So ``import specdyn``, the command
line's start and the paths that only read a store or draw (``plot``, ``runs``, ``info``,
``export``) never import torch (≈1 s) or matplotlib.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports", "type_checking_imports"]


def type_checking_imports(source: str) -> dict[str, str]:
    """Public name → home of every relative ``from .module import name [as alias]`` in the
    ``if TYPE_CHECKING:`` blocks of a module's `source`: ``"._run"``, or
    ``"._module:attr"`` for an alias of ``attr``."""
    homes: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if isinstance(statement, ast.ImportFrom) and statement.level:
                module = "." * statement.level + (statement.module or "")
                for alias in statement.names:
                    same = alias.asname in (None, alias.name)
                    homes[alias.asname or alias.name] = module if same else f"{module}:{alias.name}"
    return homes


def lazy_exports(
    package: str, extra: Mapping[str, str] | None = None
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose names load on first use.

    package: the package's ``__name__`` (its source is read for the ``TYPE_CHECKING``
    imports, `type_checking_imports`). extra: more name → home entries (same form).
    A name, once loaded, is set on the package, so later look-ups are plain attributes;
    a subpackage or module of the package is imported when looked up, as an eager
    ``__init__`` would have made it an attribute.
    """
    module = sys.modules[package]
    with open(module.__file__, encoding="utf-8") as fh:
        homes = {**type_checking_imports(fh.read()), **(extra or {})}

    def __getattr__(name: str) -> object:
        home = homes.get(name)
        if home is None:
            if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attr = home.partition(":")
        value = getattr(importlib.import_module(module_name, package), attr or name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(homes))

    return __getattr__, __dir__
