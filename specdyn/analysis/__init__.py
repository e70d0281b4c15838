"""Analysis: checkpoints → matrix views → spectra (and singular vectors) → one store per run.

`analyze(path)` is the entry point; `StepStream` is what a step source (a local folder, the
Pythia hub) provides to it. User documentation: ``docs/analyze.md``.
"""

from ._analyze import AnalyzeResult, ComputeOptions, MatrixSelection, Progress, RunAnalysis, analyze
from ._stepstream import LocalSteps, StepStream
from ._vector_step import VectorOptions

__all__ = [
    "AnalyzeResult",
    "ComputeOptions",
    "LocalSteps",
    "MatrixSelection",
    "Progress",
    "RunAnalysis",
    "StepStream",
    "VectorOptions",
    "analyze",
]
