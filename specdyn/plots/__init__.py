"""Figures from the stores: one function per figure, and `draw(kind, ...)` for the CLI.

matplotlib takes about half a second to import, so this package loads its figure modules
on first use of a figure name (PEP 562 module ``__getattr__``): ``import specdyn`` and
``specdyn analyze`` never import matplotlib. User documentation: ``docs/plots.md``.
"""

from ._names import PLOT_NAMES

# every name but PLOT_NAMES is looked up in `_figures` on first access
_LAZY = (
    *PLOT_NAMES,
    "COMPARISON_KINDS",
    "FIGURE_KINDS",
    "FORMATS",
    "RUN_KINDS",
    "default_output",
    "short_names",
)

__all__ = ["PLOT_NAMES", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from . import _figures

        return getattr(_figures, name)
    raise AttributeError(f"module 'specdyn.plots' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
