"""The run store: one HDF5 file per run (schema, crash-safe writer, reader, lock), the
workspace of stores, and the comparison store. Schemas: ``docs/store.md``,
``docs/compare.md``. Nothing outside this package names a path inside these files.

Modules: ``_layout`` (the schema: every path and type), ``_records`` (step and matrix
records), ``_plan`` (what a store is built from; a request checked against a store),
``_build`` (building a whole file, renamed over the store), ``_writer`` (`StoreWriter`),
``_sections`` and ``_reader`` (`Run` and its sections), ``_tables`` (a run's sections
as tidy tables, chunk by chunk: `Run.to_pandas`, `Run.to_xarray`), ``_export`` (those
tables written to parquet, CSV or netCDF: `export`), ``_vectors`` and ``_training``
(the optional sections), ``_describe`` (every dataset's description, units and dims
attributes, and the dimension scales: schema 4), ``_lock`` (one writer per store), ``_workspace`` and
``_listing`` (where stores live, `list_runs`), ``_checksums`` and ``_verify`` (damage
on disk detected: the checksums, `verify`), ``_comparison`` (what `specdyn compare`
writes, and `Comparison` to read it), ``_comparison_tables`` (its sections as tidy
tables and labelled arrays: `Comparison.to_pandas`, `Comparison.to_xarray`), ``_prune_results`` (``prune.h5`` of
`specdyn.prune.prune_magnitude`).
"""

from ._checksums import Damage
from ._comparison import (
    Comparison,
    ComparisonResult,
    comparison_path,
    open_comparison,
    write_comparison,
)
from ._comparison_tables import COMPARISON_COLUMNS, COMPARISON_SECTIONS
from ._export import (
    EXPORT_CHUNK_ROWS,
    EXPORT_FORMATS,
    PARQUET_GROUPS_PER_FILE,
    ExportFile,
    ExportReport,
    export,
)
from ._layout import SCHEMA_VERSION
from ._listing import RunSummary, list_runs
from ._lock import WriterLock, is_being_written, lock_path_for
from ._prune_results import (
    PRUNE_RESULTS_NAME,
    PruneResults,
    read_prune_results,
    write_prune_results,
)
from ._reader import Run, open_run
from ._records import CheckpointProblem, MatrixRecord, StepRecord
from ._sections import RunAgreement, RunAlignment, RunTraining, RunValues, RunVectors
from ._tables import COLUMNS as TABLE_COLUMNS
from ._tables import DEFAULT_CHUNK_ROWS, TableChunk, table_chunks
from ._tables import SECTIONS as TABLE_SECTIONS
from ._vectors import (
    SAVE_MODES,
    MatrixAgreement,
    PairAlignment,
    PairRecord,
    StepVectors,
    VectorLayout,
)
from ._verify import VerifyReport, verify, verify_store
from ._workspace import (
    DEFAULT_HOME,
    HOME_ENV,
    STORE_SUFFIX,
    resolve_home,
    resolve_run,
    store_path_for,
)
from ._writer import StoreWriter

__all__ = [
    "PRUNE_RESULTS_NAME",
    "PruneResults",
    "read_prune_results",
    "write_prune_results",
    "CheckpointProblem",
    "Comparison",
    "COMPARISON_COLUMNS",
    "COMPARISON_SECTIONS",
    "Damage",
    "EXPORT_CHUNK_ROWS",
    "PARQUET_GROUPS_PER_FILE",
    "EXPORT_FORMATS",
    "ExportFile",
    "ExportReport",
    "export",
    "ComparisonResult",
    "DEFAULT_HOME",
    "HOME_ENV",
    "MatrixAgreement",
    "MatrixRecord",
    "PairAlignment",
    "PairRecord",
    "Run",
    "RunAgreement",
    "RunAlignment",
    "RunSummary",
    "RunTraining",
    "RunValues",
    "RunVectors",
    "SAVE_MODES",
    "SCHEMA_VERSION",
    "STORE_SUFFIX",
    "StepRecord",
    "TABLE_COLUMNS",
    "TABLE_SECTIONS",
    "DEFAULT_CHUNK_ROWS",
    "TableChunk",
    "table_chunks",
    "StepVectors",
    "StoreWriter",
    "VectorLayout",
    "VerifyReport",
    "WriterLock",
    "comparison_path",
    "is_being_written",
    "list_runs",
    "lock_path_for",
    "open_comparison",
    "open_run",
    "resolve_home",
    "resolve_run",
    "store_path_for",
    "verify",
    "verify_store",
    "write_comparison",
]
