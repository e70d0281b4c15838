"""Analysis: checkpoints → matrix views → spectra (and singular vectors) → one store per run.

`analyze(path)` is the entry point for checkpoints on disk; `analyze_stream(source, store)`
analyses one run from any `StepStream` (a local folder, the Pythia hub). User
documentation: ``docs/analyze.md``.
"""

from ._analyze import analyze
from ._records import AnalyzeResult, ComputeOptions, MatrixSelection, Progress, RunAnalysis
from ._run import analyze_stream, settled_vectors
from ._stepstream import LocalSteps, StepStream
from ._vector_step import DEFAULTS as VECTOR_DEFAULTS
from ._vector_step import VectorOptions

__all__ = [
    "AnalyzeResult",
    "ComputeOptions",
    "LocalSteps",
    "MatrixSelection",
    "Progress",
    "RunAnalysis",
    "StepStream",
    "VECTOR_DEFAULTS",
    "VectorOptions",
    "analyze",
    "analyze_stream",
    "settled_vectors",
]
