"""specdyn: the spectral dynamics of weights.

Singular values (and vectors) of every weight matrix of a network at every
training checkpoint, stored in HDF5 and drawn from there.

    import specdyn
    result = specdyn.analyze("ckpts/")            # writes ./specdyn-runs/<run>.h5
    with specdyn.open_run("ckpts") as run:
        run.metric("normalized_effective_rank")   # [steps, matrices]
    specdyn.plot_rank("ckpts").figure.savefig("rank.png")
"""

# The figures need matplotlib (≈0.45 s to import): loaded on first use, so that
# `specdyn analyze` and `import specdyn` do not pay for it.
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
from .metrics import METRIC_NAMES, spectral_metrics
from .plots import PLOT_NAMES as _PLOT_NAMES
from .pythia import plan_pythia
from .sources import discover
from .steps import select_steps
from .store import Run, VerifyReport, export, list_runs, open_run, resolve_home, verify
from .types import Note, TensorInfo
from .version import __version__

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
    "Note",
    "TensorInfo",
    "SpecdynError",
    "compare",
    "open_comparison",
    *_PLOT_NAMES,
]


def __getattr__(name: str):
    if name in _PLOT_NAMES:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'specdyn' has no attribute {name!r}")
