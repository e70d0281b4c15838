"""Checksums of a store's content (schema 3): how damage on disk is detected.

Two kinds, both under ``/checksums`` (docs/store.md, "Checksums"):

- **rows**: everything written after a file is built is written one row at a time (a
  step's σ and metrics, its alignment, agreement and kept vectors, a flag, a provenance
  record). Each such section has a table ``/checksums/<section>/rows`` uint64
  [rows, D] holding one digest per row and dataset, in the order of
  ``/checksums/<section>/datasets`` (vlen [D]). A row's digests are written with its
  data, before its done flag, so a row that counts (done flag 1) always has them; 0
  means "none written".
- **static**: everything written once, when the file is built (the step and matrix
  tables, pairs, training metrics, attributes, among them every dataset's description,
  units and dims and the dimension scales of schema 4, the row tables' dataset lists),
  has one digest per dataset or attribute in ``/checksums/static/{name,digest}``.

A digest is CRC-32 (low 32 bits) and Adler-32 (high 32 bits) of the raw bytes HDF5 returns
for the row (or of the dataset's dtype, shape and bytes; or of the attribute's value), with
0 replaced by 1. Readers check the rows and tables they read
(`StoreChecks`); `scan` checks a whole file (`specdyn verify`, and every writer before it
trusts a done step).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ..errors import StoreDamagedError, command_ref, option_ref
from . import _describe as describe_
from . import _layout as layout

__all__ = [
    "ALGORITHM",
    "Damage",
    "FileScan",
    "ROW_SECTIONS",
    "StoreChecks",
    "damage_by_row",
    "damaged_error",
    "fate",
    "digest",
    "row_digests",
    "scan",
    "seal",
    "table_path",
    "take_rows",
]

ALGORITHM = "crc32+adler32"
CHECKSUM_SCHEMA = 3  # the first schema whose stores have checksums
GROUP = "checksums"
STATIC_NAME = "checksums/static/name"  # vlen [N]: a dataset path or "@OBJECT:ATTRIBUTE"
STATIC_DIGEST = "checksums/static/digest"  # uint64 [N]

# The sections written row by row, and the done flag that says which of their rows count
# (None: every row counts; a flag's digest is 0 only while it is being rewritten).
ROW_SECTIONS: dict[str, str | None] = {
    "values": layout.STEPS_DONE,
    "alignment": layout.done_path("alignment"),
    "agreement": layout.done_path("agreement"),
    "vectors": layout.done_path("vectors"),
    "flag": None,
    "provenance": layout.PROVENANCE_USED,
}
# How a message names a section's rows.
_ROW_NAME = {
    "values": "values of step",
    "alignment": "alignment of step",
    "agreement": "agreement of step",
    "vectors": "kept vectors of step",
    "flag": "flag of step",
    "provenance": "provenance record",
}
_BLOCK_BYTES = 32 << 20  # what a scan reads at once


def table_path(section: str, what: str = "rows") -> str:
    """``checksums/<section>/rows`` (uint64 [rows, D]) or ``.../datasets`` (vlen [D])."""
    return f"{GROUP}/{section}/{what}"


def digest(data: bytes | np.ndarray) -> int:
    """The 64-bit digest of some bytes: CRC-32 in the low half (it detects every error
    burst of up to 32 bits, so any changed byte for certain), Adler-32 in the high half;
    never 0, which means "not written". Both run at memory speed, unlike a hash meant
    against attackers, which a checksum of accidents does not need."""
    value = zlib.crc32(data) | (zlib.adler32(data) << 32)
    return value or 1


def row_digests(rows: np.ndarray) -> np.ndarray:
    """One digest per row of an array read from (or to be written to) a dataset: uint64
    [len(rows)], each over the raw bytes of ``rows[i]``."""
    rows = np.ascontiguousarray(rows)
    raw = rows.reshape(len(rows), -1).view(np.uint8)  # each row's bytes, no copy
    return np.array([digest(raw[i]) for i in range(len(rows))], np.uint64)


def value_digest(ds: h5py.Dataset, value: Any) -> np.uint64:
    """The digest of one row `value` as it will read back from `ds` (cast to its type)."""
    arr = np.asarray(value, dtype=ds.dtype).reshape((1, *ds.shape[1:]))
    return row_digests(arr)[0]


@dataclass(frozen=True)
class Damage:
    """One piece of a store that does not match its checksum (or cannot be read).

    section: "static", or a row section ("values", "alignment", ...); step: the step of a
    damaged row (None for static content and provenance records); row: the row in its
    section's tables (None for static content); what: the dataset or attribute, and
    what is wrong with it.
    """

    section: str
    step: int | None
    row: int | None
    what: str

    def describe(self) -> str:
        """One line: where the damage is."""
        if self.section == "static":
            return f"{self.what} (written when the store was built)"
        if self.step is not None:
            return f"{_ROW_NAME[self.section]} {self.step}: {self.what}"
        return f"{_ROW_NAME[self.section]} {self.row}: {self.what}"


@dataclass
class FileScan:
    """What `scan` found in one store file.

    checked: the file has checksums (schema 3; False for older stores, which cannot be
    checked); damage: every damaged piece; trusted: section → bool [rows], the rows whose
    done flag is set and whose data matches (the rows a writer may keep); uncommitted:
    (section, step) of rows whose data and checksums are complete but whose done flag is
    not set (a writer killed between the two, or a flag cleared by damage: recomputed);
    rows_checked: the number of (row, dataset) digests compared.
    """

    checked: bool
    damage: list[Damage] = field(default_factory=list)
    trusted: dict[str, np.ndarray] = field(default_factory=dict)
    uncommitted: list[tuple[str, int]] = field(default_factory=list)
    rows_checked: int = 0

    @property
    def static_damage(self) -> list[Damage]:
        """The damage in content written at build (which no re-run can recompute)."""
        return [d for d in self.damage if d.section == "static"]


# ----------------------------------------------------------------------------- building


def section_datasets(f: h5py.File, section: str) -> list[str]:
    """The datasets of a row section in a file being built, in table order."""
    if section == "values":
        matrices = layout.read_strings(f[layout.MATRICES_NAME])
        metrics = [
            f"{layout.METRICS}/{name}" for name in sorted(f[layout.METRICS].keys())
        ]  # order does not matter, the table names them
        return (
            [layout.sigma_path(m) for m in matrices]
            + metrics
            + [
                layout.MATRICES_METHOD,
                layout.STEPS_NOTES,
                layout.STEPS_INVOCATION,
                layout.STEPS_SHA256,
            ]
        )
    if section == "flag":
        return [layout.STEPS_FLAG]
    if section == "provenance":
        return [layout.PROVENANCE_RECORD]
    if section not in f:
        return []
    skip = {ROW_SECTIONS[section], layout.VECTORS_STEP}
    found: list[str] = []
    f[section].visititems(
        lambda name, obj: (
            found.append(f"{section}/{name}")
            if isinstance(obj, h5py.Dataset) and f"{section}/{name}" not in skip
            else None
        )
    )
    return sorted(found)


def seal(f: h5py.File, describe: bool = True) -> None:
    """Write every checksum of a file being built (after all its content, before it is
    renamed into place): the digests of each row section's counting rows, read back
    from the file, and the digests of its static content, the attributes of the
    checksum tables included (`describe`: give them their ``description`` and ``dims``,
    as a schema 4 build does)."""
    f.attrs["checksum"] = ALGORITHM
    g = f.create_group(GROUP)
    row_paths: set[str] = set()
    for section, done_path in ROW_SECTIONS.items():
        paths = section_datasets(f, section)
        if not paths:
            continue
        row_paths.update(paths)
        g.create_group(section)
        listed = layout.vlen_strings(f, table_path(section, "datasets"), paths)
        n = f[paths[0]].shape[0]
        counts = np.ones(n, dtype=bool) if done_path is None else np.asarray(f[done_path][()]) == 1
        table = np.zeros((n, len(paths)), dtype=np.uint64)
        rows = np.flatnonzero(counts)
        for j, path in enumerate(paths):
            for block_rows, data in _blocks(f[path], rows):
                table[block_rows, j] = row_digests(data)
        rows_ds = layout.new_dataset(f, table_path(section), table.shape, np.uint64)
        rows_ds[...] = table
        if describe:
            describe_.annotate(listed)
            describe_.annotate(rows_ds)
    items = list(_static_items(f, row_paths))
    g.create_group("static")
    # the static tables' own attributes are static content too: named in the table
    # before they exist, hashed once they are written
    own = [
        (path, attr)
        for path in (STATIC_NAME, STATIC_DIGEST)
        for attr in (_described_attrs(path) if describe else ())
    ]
    names = [name for name, _ in items] + [f"@/{path}:{attr}" for path, attr in own]
    name_ds = layout.vlen_strings(f, STATIC_NAME, names)
    digest_ds = layout.new_dataset(f, STATIC_DIGEST, (len(names),), np.uint64)
    if describe:
        describe_.annotate(name_ds)
        describe_.annotate(digest_ds)
    data = [d for _, d in items] + [_attr_bytes(f[path], attr) for path, attr in own]
    digest_ds[...] = np.array([digest(d) for d in data], dtype=np.uint64)


def _described_attrs(path: str) -> list[str]:
    """The attributes `describe_.annotate` gives the dataset at `path`, sorted."""
    _, units, _ = describe_.spec(path)
    return sorted(["description", "dims"] + (["units"] if units else []))


def _blocks(ds: h5py.Dataset, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, their data) of `ds` for the given rows, read in bounded contiguous blocks."""
    if not len(rows):
        return
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    per_block = max(1, _BLOCK_BYTES // row_bytes)
    for start in range(0, len(rows), per_block):
        sel = rows[start : start + per_block]
        lo, hi = int(sel[0]), int(sel[-1]) + 1
        yield sel, ds[lo:hi][sel - lo]


def _static_items(f: h5py.File, row_paths: set[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every piece of static content, in a fixed order: attributes as
    ``@OBJECT:NAME``, datasets by path."""
    excluded = set(row_paths) | {p for p in ROW_SECTIONS.values() if p}
    excluded |= {STATIC_NAME, STATIC_DIGEST}
    excluded |= {table_path(s) for s in ROW_SECTIONS}
    objects: list[tuple[str, Any]] = [("/", f)]
    f.visititems(lambda name, obj: objects.append(("/" + name, obj)))
    paths = _ObjectPaths(f, objects)
    for name, obj in sorted(objects, key=lambda item: item[0]):
        for attr in sorted(obj.attrs.keys()):
            yield f"@{name}:{attr}", _attr_bytes(obj, attr, paths)
        path = name.lstrip("/")
        if isinstance(obj, h5py.Dataset) and path not in excluded:
            yield path, _dataset_bytes(obj)


class _ObjectPaths:
    """The path of the object an object reference points to, from the file's own walk.

    h5py's ``file[ref].name`` asks HDF5 to search the whole tree for a name (~0.2 ms a
    reference, most of a store scan); the object's address, looked up in the walk that
    `_static_items` already made, gives the same path ~10× faster. A reference to an
    object the walk did not see falls back to HDF5's search."""

    def __init__(self, f: h5py.File, objects: list[tuple[str, Any]]) -> None:
        self._file = f
        self._by_addr: dict[int, str] | None = None
        self._objects = objects

    def __call__(self, ref: Any) -> str:
        """The absolute path of the object `ref` points to."""
        if self._by_addr is None:  # built on the first reference: most scans have some
            self._by_addr = {h5py.h5o.get_info(obj.id).addr: n for n, obj in self._objects}
        target = h5py.h5r.dereference(ref, self._file.id)
        found = self._by_addr.get(h5py.h5o.get_info(target).addr) if target else None
        return found if found is not None else self._file[ref].name


def _attr_bytes(obj: Any, attr: str, paths: _ObjectPaths | None = None) -> bytes:
    """The bytes the attribute `attr` of `obj` is hashed as. Object references (the
    dimension scales' ``DIMENSION_LIST`` and ``REFERENCE_LIST``) are file addresses, which
    a rebuild moves: they are hashed as the paths they point to."""
    value = obj.attrs[attr]
    if attr in ("DIMENSION_LIST", "REFERENCE_LIST") and paths is None:
        paths = _ObjectPaths(obj.file, [])
    if attr == "DIMENSION_LIST":
        names = [[paths(ref) for ref in refs] for refs in value]
        return b"d" + repr(names).encode("utf-8")
    if attr == "REFERENCE_LIST":
        rows = [(paths(row[0]), int(row[1])) for row in value]
        return b"r" + repr(rows).encode("utf-8")
    if isinstance(value, bytes):
        return b"b" + value
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    arr = np.asarray(value)
    if arr.dtype.kind == "O":  # an array of strings (``dims``): length-prefixed values
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in arr.reshape(-1)]
        body = b"".join(len(v).to_bytes(8, "little") + v for v in items)
        return b"o" + repr(arr.shape).encode() + body
    return arr.dtype.str.encode() + repr(arr.shape).encode() + arr.tobytes()


def _dataset_bytes(ds: h5py.Dataset) -> bytes:
    """The bytes a static dataset is hashed as: its type, shape and content."""
    head = f"{ds.dtype.str}{ds.shape}".encode()
    data = ds[()]
    if ds.dtype.kind == "O":  # variable-length strings: length-prefixed
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in data.reshape(-1)]
        return head + b"".join(len(v).to_bytes(8, "little") + v for v in items)
    return head + np.ascontiguousarray(data).tobytes()


# ----------------------------------------------------------------------------- checking


class StoreChecks:
    """The checksum tables of a store open for reading, and the checks its readers make.

    `load` checks at once everything small (static content, done flags, flags,
    provenance records, and the small per-step tables: methods, notes, invocations,
    sha256); the large rows (σ, metrics, alignment, agreement, vectors) are checked
    when a reader reads them (`check_rows`).
    """

    def __init__(self, f: h5py.File) -> None:
        self._f = f
        self.tables: dict[str, np.ndarray] = {}
        self.columns: dict[str, tuple[str, int]] = {}  # dataset path → (section, column)
        self.done: dict[str, np.ndarray] = {}  # section → the raw done flags
        for section, done_path in ROW_SECTIONS.items():
            if table_path(section) not in f:
                continue
            self.tables[section] = np.asarray(f[table_path(section)][()], dtype=np.uint64)
            paths = layout.read_strings(f[table_path(section, "datasets")])
            for j, path in enumerate(paths):
                self.columns[path] = (section, j)
            if done_path is not None:
                self.done[section] = np.asarray(f[done_path][()])

    @classmethod
    def load(cls, f: h5py.File) -> StoreChecks | None:
        """The checks of an open store, None for a store without checksums (schema < 3).

        Raises:
            StoreDamaged: static content, a done flag or a small table does not match.
        """
        if GROUP not in f:
            if _schema(f) >= CHECKSUM_SCHEMA:
                raise StoreDamaged([Damage("static", None, None, "the checksums are missing")])
            return None
        checks = cls(f)
        damage = _static_damage(f)
        damage += checks.flag_damage()
        if not damage:
            for section, paths in (
                ("values", _SMALL_VALUE_TABLES),
                ("flag", (layout.STEPS_FLAG,)),
                ("provenance", (layout.PROVENANCE_RECORD,)),
            ):
                for path in paths:
                    damage += checks.row_damage(path, checks.counting_rows(section))
        if damage:
            raise StoreDamaged(damage)
        return checks

    def counting_rows(self, section: str) -> np.ndarray:
        """The rows of a section whose done flag is set (every row for flags)."""
        if section not in self.tables:
            return np.zeros(0, dtype=np.int64)
        if section not in self.done:
            table = self.tables[section]
            return np.flatnonzero(table[:, 0] != 0) if table.size else np.zeros(0, np.int64)
        return np.flatnonzero(self.done[section] == 1)

    def flag_damage(self) -> list[Damage]:
        """Done flags that are neither 0 nor 1, or set over rows without digests."""
        out = []
        for section, flags in self.done.items():
            table = self.tables[section]
            bad = np.flatnonzero((flags != 0) & (flags != 1))
            missing = np.flatnonzero((flags == 1) & (table == 0).any(axis=1))
            for row in bad:
                out.append(self._damage(section, int(row), f"done flag reads {int(flags[row])}"))
            for row in missing:
                out.append(self._damage(section, int(row), "done without checksums"))
        return out

    def row_damage(
        self, path: str, rows: np.ndarray, data: np.ndarray | None = None, offset: int = 0
    ) -> list[Damage]:
        """The rows of dataset `path` that do not match their digests (read here when `data`
        is None, else `data` holds the dataset's rows from `offset` on)."""
        if path not in self.columns or not len(rows):
            return []
        section, column = self.columns[path]
        if data is None:
            data, offset = self._f[path][()], 0
        wanted = self.tables[section][rows, column]
        found = row_digests(take_rows(np.asarray(data), rows - offset))
        return [
            self._damage(section, int(row), f"{path} does not match its checksum")
            for row in rows[found != wanted]
        ]

    def check_rows(self, path: str, rows: np.ndarray, data: np.ndarray, offset: int = 0) -> None:
        """Raise StoreDamaged unless the given rows of dataset `path` match their digests
        (`data`: its rows from `offset` on, just read)."""
        damage = self.row_damage(path, np.asarray(rows, dtype=np.int64), data, offset)
        if damage:
            raise StoreDamaged(damage)

    def _damage(self, section: str, row: int, what: str) -> Damage:
        """A Damage of one row, with its step when the section is per step."""
        return Damage(section, _row_step(self._f, section, row), row, what)


_SMALL_VALUE_TABLES = (
    layout.MATRICES_METHOD,
    layout.STEPS_NOTES,
    layout.STEPS_INVOCATION,
    layout.STEPS_SHA256,
)


def take_rows(data: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``data[rows]``, a view when the rows are one contiguous run (the usual case)."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return data[int(rows[0]) : int(rows[-1]) + 1]
    return data[rows]


class StoreDamaged(Exception):
    """Damage found while reading (the reader turns it into a StoreDamagedError)."""

    def __init__(self, damage: Sequence[Damage]) -> None:
        super().__init__(damage[0].describe())
        self.damage = list(damage)


def damage_by_row(damage: Sequence[Damage]) -> list[tuple[Damage, str]]:
    """The damage grouped by row: (its first piece, one line naming it and how many more
    datasets of the same row are damaged)."""
    by_row: dict[tuple[str, int | None, int | None, str], list[Damage]] = {}
    for d in damage:
        key = (d.section, d.step, d.row, d.what if d.row is None else "")
        by_row.setdefault(key, []).append(d)
    out = []
    for group in by_row.values():
        more = f" and {len(group) - 1} more dataset(s)" if len(group) > 1 else ""
        out.append((group[0], group[0].describe() + more))
    return out


def fate(damage: Damage) -> str:
    """What a rebuild does with a damaged row."""
    if damage.section == "provenance":
        return "replaced by a record saying so"
    if damage.section == "flag":
        return "the flag is cleared"
    return "marked not done, to be computed again from its checkpoint"


def damaged_error(path: Any, damage: Sequence[Damage]) -> StoreDamagedError:
    """The one-line error for damage found while reading the store `path`: where, and how
    to recover (recompute the steps, drop them, or rebuild when built content is hit)."""
    first = damage[0]
    more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
    name = getattr(path, "stem", str(path))
    verify = command_ref("verify")
    if any(d.section == "static" for d in damage):
        static = next(d for d in damage if d.section == "static")
        return StoreDamagedError(
            f"{path}: damaged on disk: {static.describe()}{more}; the store cannot be trusted: "
            f"{layout.REBUILD} (everything is recomputed)",
            file=path,
        )
    steps = sorted({d.step for d in damage if d.step is not None})
    repair = option_ref(f"specdyn.verify({name!r}, repair=True)", f"specdyn verify {name} --repair")
    return StoreDamagedError(
        f"{path}: damaged on disk: {first.describe()}{more}; re-run {command_ref('analyze')} on "
        f"its checkpoints to compute the damaged step(s) again, or drop them with {repair} "
        f"({verify} lists every damaged step)",
        file=path,
        step=steps[0] if steps else None,
    )


def _row_step(f: h5py.File, section: str, row: int) -> int | None:
    """The step of a row of a section (None for provenance records)."""
    try:
        if section in ("values", "alignment", "agreement", "flag"):
            return int(f[layout.STEPS_STEP][row])
        if section == "vectors":
            return int(f[layout.VECTORS_STEP][row])
    except (KeyError, OSError, ValueError, IndexError):
        return None
    return None


def _static_damage(f: h5py.File) -> list[Damage]:
    """Every piece of static content that is missing, unreadable or changed."""
    try:
        names = layout.read_strings(f[STATIC_NAME])
        digests = np.asarray(f[STATIC_DIGEST][()], dtype=np.uint64)
    except (KeyError, OSError, ValueError, TypeError) as exc:
        return [Damage("static", None, None, f"the checksum table is unreadable ({exc})")]
    if len(names) != len(digests):
        return [Damage("static", None, None, "the checksum table is cut short")]
    wanted = dict(zip(names, digests.tolist(), strict=True))
    row_paths: set[str] = set()
    for section in ROW_SECTIONS:
        if table_path(section, "datasets") in f:
            try:
                row_paths.update(layout.read_strings(f[table_path(section, "datasets")]))
            except (OSError, ValueError, TypeError):
                pass  # the list itself is static content: reported below
    out = []
    seen = set()
    try:
        for name, data in _static_items(f, row_paths):
            seen.add(name)
            if name not in wanted:
                out.append(Damage("static", None, None, f"{name} has no checksum"))
            elif digest(data) != wanted[name]:
                out.append(Damage("static", None, None, f"{name} does not match its checksum"))
    except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
        out.append(Damage("static", None, None, f"unreadable content ({_reason(exc)})"))
        return out
    # what is gone first, datasets before attributes: a removed dataset takes its
    # attributes with it and changes the scales that pointed to it
    gone = sorted((n for n in wanted if n not in seen), key=lambda n: n.startswith("@"))
    return [Damage("static", None, None, f"{n} is missing") for n in gone] + out


def _schema(f: h5py.File) -> int:
    """The store's schema version (0 when unreadable: the header check reports it)."""
    try:
        return int(f.attrs.get("schema_version", 0))
    except (TypeError, ValueError):
        return 0


def _reason(exc: BaseException) -> str:
    """An exception on one line."""
    return str(exc).replace("\n", " ") or type(exc).__name__


def scan(f: h5py.File) -> FileScan:
    """Check every checksum of an open store file.

    Returns:
        A `FileScan`: the damage found, and for each row section the rows a writer may
        trust (done flag 1 and every digest matching). A store without checksums
        (schema < 3) is returned with ``checked = False`` and its done flags trusted as
        they are.
    """
    if GROUP not in f and _schema(f) >= CHECKSUM_SCHEMA:
        result = FileScan(checked=True)
        result.damage.append(Damage("static", None, None, "the checksums are missing"))
        return result
    if GROUP not in f:
        result = FileScan(checked=False)
        for section, done_path in ROW_SECTIONS.items():
            if done_path is not None and done_path in f:
                result.trusted[section] = np.asarray(f[done_path][()]) != 0
        return result
    result = FileScan(checked=True)
    result.damage += _static_damage(f)
    try:
        checks = StoreChecks(f)
    except (KeyError, OSError, ValueError, TypeError) as exc:
        result.damage.append(Damage("static", None, None, f"checksum tables unreadable ({exc})"))
        return result
    result.damage += checks.flag_damage()
    for section, table in checks.tables.items():
        bad_rows = _scan_section(f, checks, section, table, result)
        if section in checks.done:
            trusted = checks.done[section] == 1
            _find_uncommitted(f, checks, section, table, result)
        else:  # flags: every row counts
            trusted = np.ones(table.shape[0], dtype=bool)
        trusted[list(bad_rows)] = False
        result.trusted[section] = trusted
    for d in result.damage:
        if d.section in result.trusted and d.row is not None:
            result.trusted[d.section][d.row] = False
    return result


def _scan_section(
    f: h5py.File, checks: StoreChecks, section: str, table: np.ndarray, result: FileScan
) -> set[int]:
    """Compare every counting row of a section with its digests; the damaged rows."""
    rows = checks.counting_rows(section)
    bad: set[int] = set()
    for path, (sec, column) in checks.columns.items():
        if sec != section:
            continue
        try:
            ds = f[path]
            for block_rows, data in _blocks(ds, rows):
                found = row_digests(data)
                result.rows_checked += len(block_rows)
                for row in block_rows[found != table[block_rows, column]]:
                    bad.add(int(row))
                    result.damage.append(
                        checks._damage(section, int(row), f"{path} does not match its checksum")
                    )
        except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
            bad.update(int(r) for r in rows)
            result.damage.append(
                Damage(section, None, None, f"{path} is unreadable ({_reason(exc)})")
            )
    return bad


def _find_uncommitted(
    f: h5py.File, checks: StoreChecks, section: str, table: np.ndarray, result: FileScan
) -> None:
    """Rows whose digests are all written and match but whose done flag is 0."""
    if section == "provenance":
        return
    candidates = np.flatnonzero((checks.done[section] == 0) & (table != 0).all(axis=1))
    for row in candidates:
        ok = True
        for path, (sec, column) in checks.columns.items():
            if sec != section:
                continue
            try:
                value = f[path][int(row) : int(row) + 1]
            except (KeyError, OSError, ValueError, TypeError):
                ok = False
                break
            if row_digests(value)[0] != table[row, column]:
                ok = False
                break
        if ok:
            step = _row_step(f, section, int(row))
            result.uncommitted.append((section, -1 if step is None else step))
