"""Analysis: checkpoints → matrix views → spectra (and singular vectors) → one store per run.

`analyze(path)` is the entry point for checkpoints on disk; `analyze_stream(source, store)`
analyses one run from any `StepStream` (a local folder, the Pythia hub). `DaskSteps` and
the cluster helpers (`cluster_spec`, `connect`) run the steps on a Dask cluster
(``docs/distributed.md``). User documentation: ``docs/analyze.md``.
"""

from ._analyze import analyze
from ._distributed import (
    DaskSteps,
    RemoteCheckpoint,
    SchedulerSpec,
    check_max_inflight,
    check_workers,
    cluster_spec,
    connect,
    parse_scheduler,
    require_distributed,
    worker_space,
)
from ._records import AnalyzeResult, ComputeOptions, MatrixSelection, Progress, RunAnalysis
from ._run import analyze_stream, settled_vectors
from ._stepstream import LocalSteps, StepStream
from ._vector_step import DEFAULTS as VECTOR_DEFAULTS
from ._vector_step import VectorOptions

__all__ = [
    "AnalyzeResult",
    "ComputeOptions",
    "DaskSteps",
    "LocalSteps",
    "MatrixSelection",
    "Progress",
    "RemoteCheckpoint",
    "RunAnalysis",
    "SchedulerSpec",
    "StepStream",
    "VECTOR_DEFAULTS",
    "VectorOptions",
    "analyze",
    "analyze_stream",
    "check_max_inflight",
    "check_workers",
    "cluster_spec",
    "connect",
    "parse_scheduler",
    "require_distributed",
    "settled_vectors",
    "worker_space",
]
