"""Analysis: checkpoints → matrix views → spectra (and singular vectors) → one store per run.

`analyze(path)` is the entry point for checkpoints on disk; `analyze_stream(source, store)`
analyses one run from any `StepStream` (a local folder, the Pythia hub). `DaskSteps` and
the cluster helpers (`cluster_spec`, `connect`) run the steps on a Dask cluster
(``docs/distributed.md``). User documentation: ``docs/analyze.md``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from ._analyze import analyze
    from ._distributed import (
        MEMORY_SHARE,
        STREAM_BYTES,
        DaskSteps,
        RemoteCheckpoint,
        SchedulerSpec,
        available_memory,
        check_devices,
        check_max_inflight,
        check_version,
        check_workers,
        client_engine,
        cluster_spec,
        connect,
        default_max_inflight,
        parse_scheduler,
        require_distributed,
        result_bytes,
        worker_space,
    )
    from ._records import (
        AnalyzeResult,
        ComputeOptions,
        MatrixSelection,
        Progress,
        RunAnalysis,
        RunFailure,
    )
    from ._run import analyze_stream, settled_vectors
    from ._stepstream import LocalSteps, StepStream
    from ._vector_step import DEFAULTS as VECTOR_DEFAULTS
    from ._vector_step import VectorOptions

__all__ = [
    "MEMORY_SHARE",
    "STREAM_BYTES",
    "AnalyzeResult",
    "ComputeOptions",
    "DaskSteps",
    "LocalSteps",
    "MatrixSelection",
    "Progress",
    "RemoteCheckpoint",
    "RunAnalysis",
    "RunFailure",
    "SchedulerSpec",
    "StepStream",
    "VECTOR_DEFAULTS",
    "VectorOptions",
    "analyze",
    "analyze_stream",
    "available_memory",
    "check_devices",
    "check_max_inflight",
    "check_version",
    "check_workers",
    "client_engine",
    "cluster_spec",
    "connect",
    "default_max_inflight",
    "parse_scheduler",
    "require_distributed",
    "result_bytes",
    "settled_vectors",
    "worker_space",
]

# each public name is imported from its module on first use (specdyn/lazy.py)
__getattr__, __dir__ = lazy_exports(__name__)
