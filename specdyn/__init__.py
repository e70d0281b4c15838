"""specdyn: the spectral dynamics of weights.

Singular values (and vectors) of every weight matrix of a network at every
training checkpoint, stored in HDF5 and drawn from there.

    import specdyn
    result = specdyn.analyze("ckpts/")            # writes ./specdyn-runs/<run>.h5
    with specdyn.open_run("ckpts") as run:
        run.metric("normalized_effective_rank")   # [steps, matrices]
    specdyn.plot_rank("ckpts").figure.savefig("rank.png")
"""

# Every name below is imported on first use (PEP 562), not by ``import specdyn``: torch
# (≈1 s) and matplotlib (≈0.45 s) are paid for only by what needs them, so that
# `specdyn --help`, `plot`, `runs` and `info` start at once (issue 19).
from typing import TYPE_CHECKING

from .lazy import lazy_exports
from .plots import PLOT_NAMES as _PLOT_NAMES  # the figures' package imports lazily too
from .version import __version__

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from .analysis import (
        AnalyzeResult,
        ComputeOptions,
        MatrixSelection,
        Progress,
        RunAnalysis,
        VectorOptions,
        analyze,
    )
    from .comparison import compare, open_comparison
    from .errors import SpecdynError
    from .metrics import METRIC_NAMES, STORED_METRIC_NAMES, spectral_metrics
    from .pythia import plan_pythia
    from .sources import discover
    from .steps import select_steps
    from .store import Run, VerifyReport, export, list_runs, open_run, resolve_home, verify
    from .types import Note, TensorInfo

__all__ = [
    "__version__",
    "analyze",
    "AnalyzeResult",
    "RunAnalysis",
    "ComputeOptions",
    "MatrixSelection",
    "VectorOptions",
    "Progress",
    "open_run",
    "Run",
    "list_runs",
    "resolve_home",
    "verify",
    "VerifyReport",
    "export",
    "discover",
    "plan_pythia",
    "select_steps",
    "spectral_metrics",
    "METRIC_NAMES",
    "STORED_METRIC_NAMES",
    "Note",
    "TensorInfo",
    "SpecdynError",
    "compare",
    "open_comparison",
    *_PLOT_NAMES,
]

# each name of the TYPE_CHECKING imports above, and the figures, loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(_PLOT_NAMES, ".plots"))
