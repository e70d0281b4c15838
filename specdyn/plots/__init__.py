"""Figures from the stores: one function per figure, and `draw(kind, subject, options)`,
which looks the kind up in the figure table `FIGURES` (what ``specdyn plot`` calls).

matplotlib takes about half a second to import, so this package loads its figure modules
on first use of a figure name (PEP 562 module ``__getattr__``): ``import specdyn`` and
``specdyn analyze`` never import matplotlib. User documentation: ``docs/gallery.md``.

Modules: `_common` (what every figure shares), the figures of a run (`_esd`, the ESDs
and the heavy-tailed metrics computed from σ; `_run`, `_dynamics`, `_all`), of a
comparison (`_compare`) and of pruning results (`_prune`), and `_table`, the table of
figure kinds with `draw`; each imports only those before it in this list.
"""

from importlib import import_module

from ._names import PLOT_NAMES

# the module each name lives in, imported on first access
_HOMES = {
    "PlotError": "_common",
    "FORMATS": "_common",
    "short_names": "_common",
    "plot_rank": "_run",
    "plot_metric": "_run",
    "plot_sv": "_run",
    "plot_alignment": "_run",
    "plot_alignment_score": "_run",
    "plot_agreement": "_run",
    "plot_agreement_score": "_run",
    "plot_alignment_matrix": "_run",
    "plot_esd": "_esd",
    "plot_dynamics": "_dynamics",
    "plot_all": "_all",
    "plot_side_by_side": "_compare",
    "plot_branch_agreement": "_compare",
    "plot_split": "_compare",
    "plot_prune": "_prune",
    "draw": "_table",
    "default_output": "_table",
    "FigureOptions": "_table",
    "FigureKind": "_table",
    "FIGURES": "_table",
    "FIGURE_KINDS": "_table",
    "RUN_KINDS": "_table",
    "COMPARISON_KINDS": "_table",
}

__all__ = ["PLOT_NAMES", *_HOMES]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'specdyn.plots' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
