"""The run store: one HDF5 file per run (schema, crash-safe writer, reader, lock) and the
workspace of stores. Schema: ``docs/store.md``.
"""

from ._lock import WriterLock, lock_path_for
from ._store import SCHEMA_VERSION, MatrixRecord, Run, StepRecord, StoreWriter, open_run
from ._vectors import (
    SAVE_MODES,
    MatrixAgreement,
    PairAlignment,
    PairRecord,
    StepVectors,
    VectorLayout,
)
from ._workspace import (
    DEFAULT_HOME,
    HOME_ENV,
    STORE_SUFFIX,
    RunSummary,
    is_being_written,
    list_runs,
    resolve_home,
    resolve_run,
    store_path_for,
)

__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV",
    "MatrixAgreement",
    "MatrixRecord",
    "PairAlignment",
    "PairRecord",
    "Run",
    "RunSummary",
    "SAVE_MODES",
    "SCHEMA_VERSION",
    "STORE_SUFFIX",
    "StepRecord",
    "StepVectors",
    "StoreWriter",
    "VectorLayout",
    "WriterLock",
    "is_being_written",
    "list_runs",
    "lock_path_for",
    "open_run",
    "resolve_home",
    "resolve_run",
    "store_path_for",
]
