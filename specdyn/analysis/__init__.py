"""Analysis: checkpoints → matrix views → spectra (and singular vectors) → one store per run.

`analyze(path)` is the entry point for checkpoints on disk; `analyze_stream(source, store)`
analyses one run from any `StepStream` (a local folder, the Pythia hub). `DaskSteps` and
the cluster helpers (`cluster_spec`, `connect`) run the steps on a Dask cluster
(``docs/distributed.md``). User documentation: ``docs/analyze.md``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# each public name is imported from its module on first use (specdyn/lazy.py)
_HOMES = {
    "analyze": "._analyze",
    "MEMORY_SHARE": "._distributed",
    "STREAM_BYTES": "._distributed",
    "DaskSteps": "._distributed",
    "RemoteCheckpoint": "._distributed",
    "SchedulerSpec": "._distributed",
    "available_memory": "._distributed",
    "check_devices": "._distributed",
    "check_max_inflight": "._distributed",
    "check_version": "._distributed",
    "check_workers": "._distributed",
    "client_engine": "._distributed",
    "cluster_spec": "._distributed",
    "connect": "._distributed",
    "default_max_inflight": "._distributed",
    "parse_scheduler": "._distributed",
    "require_distributed": "._distributed",
    "result_bytes": "._distributed",
    "worker_space": "._distributed",
    "AnalyzeResult": "._records",
    "ComputeOptions": "._records",
    "MatrixSelection": "._records",
    "Progress": "._records",
    "RunAnalysis": "._records",
    "analyze_stream": "._run",
    "settled_vectors": "._run",
    "LocalSteps": "._stepstream",
    "StepStream": "._stepstream",
    "VECTOR_DEFAULTS": "._vector_step:DEFAULTS",
    "VectorOptions": "._vector_step",
}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

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
    from ._records import AnalyzeResult, ComputeOptions, MatrixSelection, Progress, RunAnalysis
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
