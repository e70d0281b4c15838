"""The store's schema: every HDF5 path and fixed-size type of a run store, named once
here, and the low-level HDF5 helpers shared by the builder, the writer and the reader
(docs/store.md describes every path and the root attributes). Nothing outside
``specdyn.store`` names a path of a run store.

Two sub-tables are owned by one module each and name their columns there: the pair table
(``/pairs``, `specdyn.store._vectors`) and the training metrics (``/training``,
`specdyn.store._training`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError, command_ref, option_ref
from ..version import __version__

FORMAT = "specdyn-store"
SCHEMA_VERSION = 4
DESCRIBED_SCHEMA = 4  # the first schema whose datasets describe themselves (docs, dims)

# Fixed-size per-step fields: a step's write must never change HDF5 metadata
# (variable-length strings would allocate in the global heap), so every value
# written after creation lives in a fixed-length slot allocated up front.
METHOD_BYTES = 64
SHA256_BYTES = 64
NOTES_BYTES = 4096
FLAG_BYTES = 256
PROVENANCE_BYTES = 8192
PROVENANCE_SLOTS = 16

EPOCH_UNKNOWN = -1
INVOCATION_NONE = -1

# HDF5 format bounds: the oldest object formats (superblock v0, which has no
# "open for writing" status flag that a killed writer could leave set), readable
# by HDF5 1.10 and later.
LIBVER = ("earliest", "v110")
_LIBVER_HIGH = h5py.h5f.LIBVER_V110  # the upper bound of LIBVER, for the low-level open

VLEN_STR = h5py.string_dtype("utf-8")
METHOD_DTYPE = h5py.string_dtype("utf-8", METHOD_BYTES)
SHA256_DTYPE = h5py.string_dtype("utf-8", SHA256_BYTES)
NOTES_DTYPE = h5py.string_dtype("utf-8", NOTES_BYTES)
FLAG_DTYPE = h5py.string_dtype("utf-8", FLAG_BYTES)
PROVENANCE_DTYPE = h5py.string_dtype("utf-8", PROVENANCE_BYTES)
# Saved vectors are stored as float32: half the bytes of float64, and an agreement
# computed from them differs from the float64 one by ~1e-7 (far below 1e-6).
VECTOR_DTYPE = np.float32

# ----------------------------------------------------------------------------- hints
# What store messages tell the caller to run or pass, worded for Python or the CLI
# (`specdyn.errors.option_ref`). `list_runs` has no ``specdyn.<command>()`` twin for
# `command_ref`, so both wordings are given.
HOME = option_ref("home")
NAME = option_ref("name")
OVERWRITE = option_ref("overwrite=True", "--overwrite")
LIST_RUNS = option_ref("specdyn.list_runs()", "specdyn runs")
REBUILD = f"re-run {command_ref('analyze')} with {OVERWRITE}"

# ----------------------------------------------------------------------------- paths
# T steps, M matrices, R = min(out, in) of a matrix, K provenance slots, S kept-vector slots.

# the step axis: one row per known step, done or pending
STEPS = "steps"
STEPS_STEP = "steps/step"  # int64 [T], ascending
STEPS_EPOCH = "steps/epoch"  # int64 [T], EPOCH_UNKNOWN when unknown
STEPS_SOURCE = "steps/source"  # vlen [T]: the checkpoint path
STEPS_FORMAT = "steps/format"  # vlen [T]
STEPS_SIZE = "steps/size"  # int64 [T]
STEPS_MTIME = "steps/mtime"  # float64 [T]
STEPS_SHA256 = "steps/sha256"  # SHA256_DTYPE [T]
STEPS_NOTES = "steps/notes"  # NOTES_DTYPE [T]: a JSON list
STEPS_FLAG = "steps/flag"  # FLAG_DTYPE [T]
STEPS_INVOCATION = "steps/invocation"  # int32 [T]: row of /provenance, INVOCATION_NONE
STEPS_DONE = "steps/done"  # uint8 [T]: only rows with 1 are valid; written last
# optional (absent in stores written by specdyn 0.1.0): where each step came from
STEPS_ORIGIN = "steps/origin"  # vlen [T]: "name", "metadata:global_step", "ancestor name", ...

# the matrix table, in forward order
MATRICES = "matrices"
MATRICES_NAME = "matrices/name"  # vlen [M]
MATRICES_PARAM = "matrices/param"
MATRICES_KEY = "matrices/key"
MATRICES_KIND = "matrices/kind"
MATRICES_PART = "matrices/part"  # "" for a whole parameter
MATRICES_SHAPE = "matrices/shape"  # int64 [M, 2]
MATRICES_RANK = "matrices/rank"  # int64 [M]
MATRICES_SOURCE_SHAPE = "matrices/source_shape"  # vlen [M]: a JSON list
MATRICES_SOURCE_DTYPE = "matrices/source_dtype"  # vlen [M]
MATRICES_METHOD = "matrices/method"  # METHOD_DTYPE [T, M]

# the values: singular values per matrix, scalar metrics per metric
SIGMA = "sigma"
METRICS = "metrics"

# what was left out, tied weights, and who wrote the store
SKIPPED = "skipped"
ALIASES = "aliases"
PROVENANCE = "provenance"
SKIPPED_PARAM = "skipped/param"  # vlen [S]
SKIPPED_REASON = "skipped/reason"
ALIASES_ALIAS = "aliases/alias"  # vlen [A]
ALIASES_TARGET = "aliases/target"
PROVENANCE_RECORD = "provenance/record"  # PROVENANCE_DTYPE [K]: JSON objects
PROVENANCE_USED = "provenance/used"  # uint8 [K], a prefix of ones

# checkpoints found beside the run's but not analysed (unreadable, unsafe, no step): a
# table written only while a file is built, absent when there were none
PROBLEMS = "problems"
PROBLEMS_SOURCE = "problems/source"  # vlen [N]: the file or folder
PROBLEMS_KIND = "problems/kind"  # vlen [N]: "corrupt", "unsafe-pickle", "no-step", ...
PROBLEMS_MESSAGE = "problems/message"  # vlen [N]: the one-line reason

# the singular-vector sections (only when the root attribute "vectors" is set)
PAIRS = "pairs"
VECTOR_SECTIONS = ("alignment", "agreement", "vectors")
ALIGNMENT_SCORE = "alignment/score"  # float64 [T, P]
AGREEMENT_SCORE = "agreement/score"  # float64 [T, M]
VECTORS_STEP = "vectors/step"  # int64 [S]: the steps whose vectors are kept


def sigma_path(matrix: str) -> str:
    """float64 [T, R]: the singular values of one matrix."""
    return f"{SIGMA}/{matrix}"


def metric_path(metric: str) -> str:
    """float64 [T, M]: one scalar metric of every matrix."""
    return f"{METRICS}/{metric}"


def done_path(section: str) -> str:
    """uint8 [T] ([S] for "vectors"): the done flags of a vector section."""
    return f"{section}/done"


def diagonal_path(section: str, name: str) -> str:
    """float64 [T, k]: the alignment diagonal of a pair, or the agreement diagonal of a
    matrix (`section` "alignment" or "agreement")."""
    return f"{section}/diagonal/{name}"


def full_matrix_path(section: str, name: str) -> str:
    """float64 [T, k, k]: a whole alignment or agreement matrix (full matrices only)."""
    return f"{section}/matrix/{name}"


def heads_path(pair: str) -> str:
    """float64 [T, H, k]: the alignment diagonal per block couple of a pair (H > 1 only)."""
    return f"alignment/heads/{pair}"


def vectors_path(side: str, matrix: str) -> str:
    """VECTOR_DTYPE [S, out, k] (side "u") or [S, in, k] (side "v"): kept vectors."""
    return f"vectors/{side}/{matrix}"


def open_h5(path: Path, mode: str) -> h5py.File:
    """Open a store file ("r", "r+" or "w") without HDF5's own file locks (specdyn's lock
    guards writers).

    Writable files are opened without HDF5's sieve buffer: with it, a small row write
    lands in a per-dataset buffer that HDF5 writes out when the dataset is closed, and a
    failure there (full disk, file size limit) is only printed, never raised, so the row
    is lost while the code goes on. Without it every write reaches the file at once and
    a failure raises where it happens.
    """
    if mode == "r":
        return h5py.File(path, "r", locking=False)
    if mode not in ("r+", "w"):
        raise ValueError(f"mode {mode!r}: use 'r', 'r+' or 'w'")
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    if mode == "w":
        fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, _LIBVER_HIGH)
    fapl.set_file_locking(False, True)
    fapl.set_sieve_buf_size(0)
    name = os.fsencode(os.fspath(path))
    if mode == "r+":
        return h5py.File(h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=fapl))
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    return h5py.File(h5py.h5f.create(name, h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl))


def write_reason(exc: BaseException) -> str:
    """What went wrong in a failed write, on one line ("File too large", "No space left
    on device", ...), from an OSError's errno or HDF5's error text."""
    text = str(exc).replace("\n", " ")
    marker = "error message = '"
    if marker in text:
        start = text.index(marker) + len(marker)
        end = text.find("'", start)
        if end > start:  # HDF5 writes strerror in lower case: one spelling for both
            reason = text[start:end]
            return reason[:1].upper() + reason[1:]
    errno_ = getattr(exc, "errno", None)
    if isinstance(errno_, int) and errno_ > 0:
        return os.strerror(errno_)
    return h5_reason(exc)


def open_checked(path: Path) -> h5py.File:
    """Open a store read-only and check its format and schema version, or raise StoreError."""
    try:
        f = open_h5(path, "r")
    except FileNotFoundError:
        raise StoreError(
            f"{path}: no such store file; check the path or list runs with {LIST_RUNS}",
            file=path,
        ) from None
    except IsADirectoryError:
        raise StoreError(
            f"{path} is a folder, not a store file; pass a run name or a .h5 store path",
            file=path,
        ) from None
    except OSError as exc:
        raise StoreError(
            f"{path} is not an HDF5 file ({h5_reason(exc)}); pass a store written by "
            f"{command_ref('analyze')}",
            file=path,
        ) from None
    try:
        check_header(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_header(f: h5py.File, path: Path) -> None:
    """Raise StoreError unless `f` is a specdyn store of a schema this version reads."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt == "specdyn-comparison":
        # the comparison figures have no specdyn.<command>() twin: both wordings given
        figures = option_ref(
            "specdyn.plot_side_by_side(), plot_branch_agreement() or plot_split()",
            "specdyn plot side-by-side|branch-agreement|split",
        )
        raise StoreError(
            f"{path} is a comparison store (written by {command_ref('compare')}), not a run; "
            f"draw it with {figures}, or open it with specdyn.open_comparison",
            file=path,
        )
    if fmt != FORMAT:
        raise StoreError(
            f"{path} is an HDF5 file but not a specdyn store (format attribute {fmt!r}); "
            f"if a newer specdyn wrote it, upgrade specdyn, else re-run {command_ref('analyze')}",
            file=path,
        )
    version = f.attrs.get("schema_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise StoreError(
            f"{path}: specdyn store without a valid schema_version ({version!r}); {REBUILD}",
            file=path,
        ) from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} uses store schema {version}, newer than specdyn {__version__} reads "
            f"(schema {SCHEMA_VERSION}); upgrade specdyn or {REBUILD}",
            file=path,
        )
    if version < 1:
        raise StoreError(f"{path}: unknown store schema {version}; {REBUILD}", file=path)


def h5_reason(exc: BaseException) -> str:
    """The useful part of an h5py open error, on one line."""
    text = str(exc).replace("\n", " ")
    if "(" in text and text.endswith(")"):
        text = text[text.rfind("(") + 1 : -1]
    return text or type(exc).__name__


def few(names: Sequence[str], limit: int = 5) -> str:
    """The first few names, comma-separated, for messages."""
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def damaged(path: Path, exc: BaseException) -> StoreError:
    """The error for a store whose expected content is missing or unreadable."""
    detail = str(exc).replace("\n", " ") or type(exc).__name__
    return StoreError(f"{path}: damaged specdyn store ({detail}); {REBUILD}", file=path)


def new_dataset(
    group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any, fill: Any = None
) -> h5py.Dataset:
    """A contiguous dataset allocated in full now (no allocation, hence no metadata
    change, when it is written later); `fill`, when given, is written into all of it.
    `name` may be a path below `group` whose parent groups exist."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every byte is written right after
    ds = group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl, track_times=False)
    if fill is not None and ds.size:
        write_blocks(
            ds, lambda start, stop: np.full((stop - start, *shape[1:]), fill, dtype=ds.dtype)
        )
    return ds


def write_blocks(ds: h5py.Dataset, make_rows, max_bytes: int = 64 << 20) -> None:
    """Write `ds` in blocks of rows (`make_rows(start, stop)`) so memory stays bounded."""
    rows = ds.shape[0]
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    step = max(1, max_bytes // row_bytes)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        ds[start:stop] = make_rows(start, stop)


def copy_rows(
    dst: h5py.Dataset,
    src: h5py.Dataset | None,
    pairs: np.ndarray,
    fill: Any,
    col_src: np.ndarray | None,
) -> None:
    """Fill `dst` with `fill`, copying rows `pairs[:, 1]` of `src` to rows `pairs[:, 0]`
    (columns reordered by `col_src` when given), in bounded blocks of rows."""
    tail = dst.shape[1:]

    def rows(start: int, stop: int) -> np.ndarray:
        block = np.full((stop - start, *tail), fill, dtype=dst.dtype)
        if src is None:
            return block
        sel = pairs[(pairs[:, 0] >= start) & (pairs[:, 0] < stop)]
        if len(sel):
            lo, hi = int(sel[:, 1].min()), int(sel[:, 1].max()) + 1
            chunk = src[lo:hi]
            if col_src is not None:
                chunk = chunk[:, col_src]
            block[sel[:, 0] - start] = chunk[sel[:, 1] - lo]
        return block

    if dst.shape[0]:
        write_blocks(dst, rows)


def vlen_strings(group: h5py.Group, name: str, values: list[str]) -> h5py.Dataset:
    """A variable-length UTF-8 string dataset, written once at creation (`name` may be a
    path below `group` whose parent groups exist)."""
    return group.create_dataset(
        name,
        data=np.array([clean_text(v) for v in values], dtype=object),
        dtype=VLEN_STR,
        track_times=False,
    )


def read_strings(ds: h5py.Dataset) -> list[str]:
    """All strings of a string dataset (vlen or fixed) as Python str."""
    if ds.size == 0:
        return []
    return [str(v) for v in ds.asstr(errors="replace")[()].reshape(-1)]


def read_string_pairs(f: h5py.File, first: str, second: str) -> list[tuple[str, str]]:
    """Two string datasets of one table read as rows (``/skipped``: param, reason;
    ``/aliases``: alias, target)."""
    return list(zip(read_strings(f[first]), read_strings(f[second]), strict=True))


def clean_text(text: str) -> str:
    """`text` made encodable as UTF-8 (undecodable file names keep a visible escape)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def fixed_bytes(text: str, nbytes: int) -> bytes:
    """UTF-8 bytes of `text`, cut at a character boundary to fit `nbytes`."""
    data = clean_text(text).encode("utf-8")
    if len(data) <= nbytes:
        return data
    return data[:nbytes].decode("utf-8", "ignore").encode("utf-8")


def notes_bytes(notes: list[str]) -> bytes:
    """A step's notes as a JSON list that fits its slot; notes that do not fit are
    replaced by one final entry counting them (never dropped silently)."""
    notes = [clean_text(n)[:1000] for n in notes]
    kept = list(notes)
    while True:
        items = (
            kept
            if len(kept) == len(notes)
            else kept
            + [f"... {len(notes) - len(kept)} more notes not stored (see the analyze output)"]
        )
        data = json.dumps(items, ensure_ascii=False).encode("utf-8")
        if len(data) <= NOTES_BYTES:
            return data
        kept.pop()


def provenance_bytes(record: dict[str, Any]) -> bytes:
    """One provenance record as JSON that fits its slot (long values shortened and
    the record marked ``"truncated": true`` when needed)."""
    data = json.dumps(record, default=str, ensure_ascii=False).encode("utf-8")
    if len(data) <= PROVENANCE_BYTES:
        return data
    short = {k: _shorten(v) for k, v in record.items()}
    short["truncated"] = True
    data = json.dumps(short, default=str, ensure_ascii=False).encode("utf-8")
    if len(data) <= PROVENANCE_BYTES:
        return data
    scalars = {
        k: v for k, v in short.items() if isinstance(v, (str, int, float, bool)) or v is None
    }
    scalars = {k: (v[:200] if isinstance(v, str) else v) for k, v in scalars.items()}
    return fixed_bytes(json.dumps(scalars, default=str, ensure_ascii=False), PROVENANCE_BYTES)


def _shorten(value: Any) -> Any:
    """A provenance value cut to a few hundred characters / fifty items."""
    if isinstance(value, str):
        return value if len(value) <= 300 else value[:300] + "..."
    if isinstance(value, (list, tuple)):
        items = [_shorten(v) for v in value[:50]]
        if len(value) > 50:
            items.append(f"... {len(value) - 50} more")
        return items
    if isinstance(value, dict):
        return {str(k): _shorten(v) for k, v in list(value.items())[:50]}
    return value


def canonical_json(value: Any) -> str:
    """JSON text with sorted keys (tuples become lists), for storing and comparing options."""
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def attr_str(f: h5py.File, name: str, default: str = "") -> str:
    """A string attribute as str."""
    value = f.attrs.get(name, default)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def now_iso() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fsync_file(f: h5py.File) -> None:
    """Flush HDF5's buffers and make the bytes durable (kill -9 needs only the flush;
    the fsync also orders data before the done flag across a power loss)."""
    f.flush()
    os.fsync(f.id.get_vfd_handle())
