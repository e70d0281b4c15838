"""The singular-vector sections of a store (schema 2): pairs, alignment, agreement and
saved vectors — their layout records, how a build creates and copies them, and how a
step's results are written (docs/store.md, "Singular vectors")."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import h5py
import numpy as np

from . import _layout as layout

SAVE_MODES = ("all", "ends", "none")
REFERENCE_RULES = ("last", "given")

# The options of a pair that say how a conv operand compared on v is reduced to
# c_in-vectors (`specdyn.pairs.ConvAlignment`); a pair has them iff it has a "tap".
DEFINITION_KEYS = ("basis", "tap", "normalize")


def conv_definition(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The conv alignment definition recorded in a pair's options, or None.

    Args:
        options: a pair's options (``/pairs/options`` of a store, `Pair.options`).

    Returns:
        ``{"basis", "tap", "normalize"}`` for a pair with a conv operand compared
        on v, None for any other pair. Options written before the definition was
        recorded (a ``tap`` without ``basis``) are the slice definition, the only
        one specdyn computed then.
    """
    if "tap" not in options:
        return None
    return {
        "basis": str(options.get("basis", "slice")),
        "tap": options["tap"],
        "normalize": bool(options.get("normalize", False)),
    }


def describe_definition(options: Mapping[str, Any]) -> str:
    """A short phrase for a pair's conv alignment definition (``basis kernel, tap [1, 1]``),
    or ``whole matrices`` for a pair without a conv operand on v."""
    d = conv_definition(options)
    if d is None:
        return "whole matrices"
    text = f"basis {d['basis']}, tap {d['tap']}"
    return text + (", normalised" if d["normalize"] else "")


def _read_options(raw: str) -> tuple[dict[str, Any], bool]:
    """A stored pair's options with its conv definition completed, and whether it had to be
    (a store written before definitions were recorded)."""
    options = json.loads(raw)
    definition = conv_definition(options)
    if definition is None or "basis" in options:
        return options, False
    return {**options, **definition}, True


@dataclass(frozen=True)
class PairRecord:
    """What the store records about one pair (see `specdyn.pairs.Pair`).

    name: pair name (``FIRST~SECOND``); first, second: matrix names; first_side,
    second_side: "u" or "v"; rule: the rule that made it; options: the rule's
    options (heads, gate, half...; for a conv operand on v its definition:
    basis, tap, normalize); blocks: number of block couples (heads, or kernel
    taps with ``tap = "all"``) whose alignments are averaged and stored one by
    one (1: only the diagonal is stored); k: diagonal length
    min(k, R_first, R_second) of the decomposed matrices; dim: length of the
    compared vectors.
    """

    name: str
    first: str
    second: str
    first_side: str
    second_side: str
    rule: str
    options: Mapping[str, Any] = field(default_factory=dict)
    blocks: int = 1
    k: int = 0
    dim: int = 0

    def _key(self) -> tuple:
        """Everything that determines the pair's numbers."""
        return (
            self.name,
            self.first,
            self.second,
            self.first_side,
            self.second_side,
            self.rule,
            layout.canonical_json(dict(self.options)),
            self.blocks,
            self.k,
            self.dim,
        )


@dataclass(frozen=True)
class VectorLayout:
    """The singular-vector part of a store: what is computed and kept.

    k: vectors per matrix (diagonals are min(k, R) long); score_top: the scores
    average the first `score_top` diagonal entries; reference: the step the
    agreement compares against; reference_rule: "last" (the run's last
    checkpoint) or "given" (``--reference``); full_matrices: whether whole k×k
    alignment and agreement matrices are stored; save_vectors: "all" | "ends" |
    "none" (which steps keep their top-k vectors); pairs: the pairs, in forward
    order; pairs_preset: the preset that made them; skipped_pairs: (pair,
    reason) of pairs a rule could not make; legacy_definitions: the store's
    conv pairs were written before their definition was recorded (read as the
    slice definition); pairs_file: the TOML pairs file the pairs were made with (None
    for a preset's), recorded so that a re-run that does not name one keeps it.
    """

    k: int
    score_top: int
    reference: int
    reference_rule: str
    full_matrices: bool
    save_vectors: str
    pairs: tuple[PairRecord, ...] = ()
    pairs_preset: str = "none"
    skipped_pairs: tuple[tuple[str, str], ...] = ()
    # read from a store whose conv pairs predate recorded definitions (read as "slice");
    # not part of equality: the numbers are those of the completed options
    legacy_definitions: bool = field(default=False, compare=False)
    # where the pairs came from, not what they are: the pairs themselves are compared
    pairs_file: str | None = field(default=None, compare=False)

    def config(self) -> dict[str, Any]:
        """The root attribute ``vectors`` (JSON object)."""
        return {
            "k": self.k,
            "score_top": self.score_top,
            "reference": self.reference,
            "reference_rule": self.reference_rule,
            "full_matrices": self.full_matrices,
            "save_vectors": self.save_vectors,
            "pairs_preset": self.pairs_preset,
            # only when set, so that stores made without a pairs file keep their bytes
            **({"pairs_file": self.pairs_file} if self.pairs_file is not None else {}),
        }

    def slots(self, steps: Sequence[int]) -> list[int]:
        """The steps whose top-k vectors are kept, given the store's steps."""
        steps = sorted(int(s) for s in steps)
        if self.save_vectors == "all":
            return steps
        if self.save_vectors == "ends" and steps:
            return sorted({steps[0], steps[-1]})
        return []


def alignment_compatible(old: VectorLayout | None, new: VectorLayout) -> bool:
    """Whether stored alignment rows stay valid under `new`."""
    return (
        old is not None
        and old.k == new.k
        and old.full_matrices == new.full_matrices
        and [p._key() for p in old.pairs] == [p._key() for p in new.pairs]
    )


def agreement_compatible(old: VectorLayout | None, new: VectorLayout) -> bool:
    """Whether stored agreement rows stay valid under `new`."""
    return (
        old is not None
        and old.k == new.k
        and old.full_matrices == new.full_matrices
        and old.reference == new.reference
    )


def changes(old: VectorLayout | None, new: VectorLayout) -> list[str]:
    """One line per change between a stored layout and a requested one, saying what is
    recomputed (worded without option names: the caller may be Python or the CLI)."""
    if old is None:
        return []
    out = []
    if old.k != new.k:
        out.append(
            f"top-k vectors changed from {old.k} to {new.k}: alignment and agreement recomputed"
        )
    elif old.full_matrices != new.full_matrices:
        out.append(
            "full k×k matrices "
            + ("added" if new.full_matrices else "dropped")
            + ": alignment and agreement recomputed"
        )
    else:
        if not alignment_compatible(old, new):
            out.append(_pairs_change(old, new))
        if old.reference != new.reference:
            if old.reference_rule == "last" and new.reference_rule == "last":
                out.append(
                    f"new checkpoints moved the last step from {old.reference} to "
                    f"{new.reference}: agreement recomputed against step {new.reference}"
                )
            else:
                out.append(
                    f"reference changed from step {old.reference} to {new.reference}: "
                    "agreement recomputed"
                )
    if old.score_top != new.score_top:
        out.append(f"scores now average the top {new.score_top} (were {old.score_top})")
    if old.save_vectors != new.save_vectors:
        out.append(f"kept vectors changed from {old.save_vectors} to {new.save_vectors} steps")
    return out


def _pairs_change(old: VectorLayout, new: VectorLayout) -> str:
    """The line saying why the alignment is recomputed: the conv definition alone, or the pairs."""

    def without_definition(p: PairRecord) -> tuple:
        rest = {k: v for k, v in p.options.items() if k not in DEFINITION_KEYS}
        return replace(p, options=rest)._key()

    same_pairs = [without_definition(p) for p in old.pairs] == [
        without_definition(p) for p in new.pairs
    ]
    if not same_pairs:
        return "the pairs changed: alignment recomputed"
    moved = [
        (describe_definition(a.options), describe_definition(b.options))
        for a, b in zip(old.pairs, new.pairs, strict=True)
        if a._key() != b._key()
    ]
    kinds = sorted(set(moved))
    what = "; ".join(f"{a} → {b}" for a, b in kinds[:2])
    if len(kinds) > 2:
        what += f"; and {len(kinds) - 2} more"
    legacy = " (the store predates recorded definitions, read as basis slice)"
    return (
        f"conv alignment definition changed for {len(moved)} pair(s): {what}"
        + (legacy if old.legacy_definitions else "")
        + "; alignment recomputed, σ, metrics and agreement kept"
    )


def read_layout(f: h5py.File) -> VectorLayout | None:
    """The vector layout of an open store, or None for a values-only (or schema 1) store."""
    raw = layout.attr_str(f, "vectors", "null")
    config = json.loads(raw) if raw else None
    if not config:
        return None
    g = f[layout.PAIRS]
    names = layout.read_strings(g["name"])
    cols = {
        key: layout.read_strings(g[key])
        for key in ("first", "second", "first_side", "second_side", "rule", "options")
    }
    blocks = g["blocks"][()]
    ks = g["k"][()]
    dims = g["dim"][()]
    options = [_read_options(raw) for raw in cols["options"]]
    pairs = tuple(
        PairRecord(
            name=names[i],
            first=cols["first"][i],
            second=cols["second"][i],
            first_side=cols["first_side"][i],
            second_side=cols["second_side"][i],
            rule=cols["rule"][i],
            options=options[i][0],
            blocks=int(blocks[i]),
            k=int(ks[i]),
            dim=int(dims[i]),
        )
        for i in range(len(names))
    )
    skipped = tuple(
        zip(
            layout.read_strings(g["skipped_pair"]),
            layout.read_strings(g["skipped_reason"]),
            strict=True,
        )
    )
    return VectorLayout(
        k=int(config["k"]),
        score_top=int(config["score_top"]),
        reference=int(config["reference"]),
        reference_rule=str(config["reference_rule"]),
        full_matrices=bool(config["full_matrices"]),
        save_vectors=str(config["save_vectors"]),
        pairs=pairs,
        pairs_preset=str(config.get("pairs_preset", "none")),
        skipped_pairs=skipped,
        legacy_definitions=any(legacy for _, legacy in options),
        pairs_file=None if config.get("pairs_file") is None else str(config["pairs_file"]),
    )


def matrix_k(vl: VectorLayout, rank: int) -> int:
    """Vectors kept for a matrix of rank R: min(k, R)."""
    return int(min(vl.k, rank))


def head_mean(diagonal: np.ndarray, top: int) -> np.ndarray:
    """Scores: the mean of the first `top` entries along the last axis (NaN when empty)."""
    d = np.asarray(diagonal, dtype=np.float64)[..., : max(0, int(top))]
    if d.shape[-1] == 0:
        return np.full(d.shape[:-1], np.nan)
    return d.mean(axis=-1)


def _row_pairs(
    new_steps: np.ndarray, old_steps: np.ndarray | None, old_done: np.ndarray | None
) -> np.ndarray:
    """(new row, old row) of every step whose old row is done, as int64 [N, 2]."""
    if old_steps is None or old_done is None:
        return np.zeros((0, 2), dtype=np.int64)
    old_row = {int(s): i for i, s in enumerate(old_steps) if old_done[i]}
    return np.array(
        [(i, old_row[int(s)]) for i, s in enumerate(new_steps) if int(s) in old_row],
        dtype=np.int64,
    ).reshape(-1, 2)


def build(
    f: h5py.File,
    vl: VectorLayout,
    matrices: Sequence[Any],
    step_values: np.ndarray,
    old: h5py.File | None,
    values_done: np.ndarray,
    trusted: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Create the vector sections of a new store file for `vl`, copying what stays valid.

    matrices: the store's `MatrixRecord`s in order; step_values: int64 [T];
    old: the store being replaced (None for a fresh one); values_done: bool [T],
    the new file's value done flags (a section row is only copied for a step whose
    values are copied too); trusted: section → bool [rows of `old`], the rows that may
    be copied (default: the old done flags; rows damaged on disk are left out).
    """

    def old_done(section: str) -> np.ndarray:
        if trusted is not None and section in trusted:
            return np.asarray(trusted[section], dtype=bool)
        return np.asarray(old[layout.done_path(section)][()], dtype=bool)

    old_vl = read_layout(old) if old is not None else None
    old_steps = (
        np.asarray(old[layout.STEPS_STEP][()], dtype=np.int64) if old_vl is not None else None
    )
    f.attrs["vectors"] = json.dumps(vl.config())
    _write_pair_table(f, vl)
    n_steps = len(step_values)

    def section_rows(name: str, compatible: bool) -> np.ndarray:
        if not compatible or old_vl is None:
            return np.zeros((0, 2), dtype=np.int64)
        rows = _row_pairs(step_values, old_steps, old_done(name))
        return rows[values_done[rows[:, 0]]] if len(rows) else rows

    # alignment
    rows = section_rows("alignment", alignment_compatible(old_vl, vl))
    g = f.create_group("alignment")
    for sub in ("diagonal", "heads", "matrix"):
        g.create_group(sub)
    scores = np.full((n_steps, len(vl.pairs)), np.nan)
    for j, p in enumerate(vl.pairs):
        diag = _copied(f, old, layout.diagonal_path("alignment", p.name), (n_steps, p.k), rows)
        if len(rows):
            scores[rows[:, 0], j] = head_mean(diag[rows[:, 0]], vl.score_top)
        if p.blocks > 1:
            _copied(f, old, layout.heads_path(p.name), (n_steps, p.blocks, p.k), rows)
        if vl.full_matrices:
            _copied(f, old, layout.full_matrix_path("alignment", p.name), (n_steps, p.k, p.k), rows)
    layout.new_dataset(f, layout.ALIGNMENT_SCORE, (n_steps, len(vl.pairs)), np.float64)[...] = (
        scores
    )
    _done_flags(f, "alignment", n_steps, rows)

    # agreement
    rows = section_rows("agreement", agreement_compatible(old_vl, vl))
    g = f.create_group("agreement")
    g.attrs["reference"] = int(vl.reference)
    for sub in ("diagonal", "matrix"):
        g.create_group(sub)
    scores = np.full((n_steps, len(matrices)), np.nan)
    for j, m in enumerate(matrices):
        k = matrix_k(vl, m.rank)
        diag = _copied(f, old, layout.diagonal_path("agreement", m.name), (n_steps, k), rows)
        if len(rows):
            scores[rows[:, 0], j] = head_mean(diag[rows[:, 0]], vl.score_top)
        if vl.full_matrices:
            _copied(f, old, layout.full_matrix_path("agreement", m.name), (n_steps, k, k), rows)
    layout.new_dataset(f, layout.AGREEMENT_SCORE, (n_steps, len(matrices)), np.float64)[...] = (
        scores
    )
    _done_flags(f, "agreement", n_steps, rows)

    # saved vectors: one slot per kept step
    slots = np.array(vl.slots(step_values.tolist()), dtype=np.int64)
    rows = np.zeros((0, 2), dtype=np.int64)
    if old_vl is not None and old_vl.k == vl.k:
        rows = _row_pairs(
            slots,
            np.asarray(old[layout.VECTORS_STEP][()], dtype=np.int64),
            old_done("vectors"),
        )
    g = f.create_group("vectors")
    layout.new_dataset(f, layout.VECTORS_STEP, (len(slots),), np.int64)[...] = slots
    for sub in ("u", "v"):
        g.create_group(sub)
    for m in matrices:
        k = matrix_k(vl, m.rank)
        out_dim, in_dim = m.shape
        for side, dim in (("u", out_dim), ("v", in_dim)):
            path = layout.vectors_path(side, m.name)
            _copied(f, old, path, (len(slots), dim, k), rows, dtype=layout.VECTOR_DTYPE)
    _done_flags(f, "vectors", len(slots), rows)


def _write_pair_table(f: h5py.File, vl: VectorLayout) -> None:
    """The ``/pairs`` group: one row per pair, plus the skipped pairs."""
    g = f.create_group(layout.PAIRS)
    g.attrs["preset"] = vl.pairs_preset
    for key in ("name", "first", "second", "first_side", "second_side", "rule"):
        layout.vlen_strings(g, key, [getattr(p, key) for p in vl.pairs])
    layout.vlen_strings(g, "options", [layout.canonical_json(dict(p.options)) for p in vl.pairs])
    for key in ("blocks", "k", "dim"):
        layout.new_dataset(g, key, (len(vl.pairs),), np.int64)[...] = np.array(
            [getattr(p, key) for p in vl.pairs], dtype=np.int64
        )
    layout.vlen_strings(g, "skipped_pair", [s for s, _ in vl.skipped_pairs])
    layout.vlen_strings(g, "skipped_reason", [r for _, r in vl.skipped_pairs])


def _copied(
    f: h5py.File,
    old: h5py.File | None,
    path: str,
    shape: tuple[int, ...],
    rows: np.ndarray,
    dtype: Any = np.float64,
) -> h5py.Dataset:
    """A new NaN-filled dataset `path` of `shape`, rows copied from `old` where listed."""
    parent, _, name = path.rpartition("/")
    ds = layout.new_dataset(f[parent], name, shape, dtype)
    src = old[path] if old is not None and len(rows) and path in old else None
    layout.copy_rows(ds, src, rows, np.nan, None)
    return ds


def _done_flags(f: h5py.File, section: str, n: int, rows: np.ndarray) -> None:
    """The section's done flags: set for copied rows only."""
    done = np.zeros(n, dtype=np.uint8)
    if len(rows):
        done[rows[:, 0]] = 1
    layout.new_dataset(f, layout.done_path(section), (n,), np.uint8)[...] = done


@dataclass(frozen=True)
class PairAlignment:
    """One pair's alignment at one step.

    diagonal: float64 [k_p], A_ii averaged over the pair's head couples; heads:
    float64 [H, k_p] per couple (only for pairs with H > 1 blocks); matrix:
    float64 [k_p, k_p], the whole alignment matrix averaged over couples (only
    with full matrices).
    """

    diagonal: np.ndarray
    heads: np.ndarray | None = None
    matrix: np.ndarray | None = None


@dataclass(frozen=True)
class MatrixAgreement:
    """One matrix's agreement with the reference at one step.

    diagonal: float64 [k_m], S_ii; matrix: float64 [k_m, k_m] (only with full matrices).
    """

    diagonal: np.ndarray
    matrix: np.ndarray | None = None


@dataclass(frozen=True)
class StepVectors:
    """The singular-vector results of one step; a section left None is not written.

    alignment: pair name → `PairAlignment` for every pair of the layout;
    agreement: matrix name → `MatrixAgreement` for every matrix; vectors:
    matrix name → (u [out, k_m], v [in, k_m]) for every matrix, only for a step
    whose vectors are kept (`VectorLayout.slots`).
    """

    alignment: Mapping[str, PairAlignment] | None = None
    agreement: Mapping[str, MatrixAgreement] | None = None
    vectors: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None


def checked_rows(
    data: StepVectors, vl: VectorLayout, matrices: Sequence[Any], step: int
) -> list[tuple[str, np.ndarray]]:
    """(dataset path, row) of every value `data` writes, validated against the layout
    (ValueError naming the pair or matrix and the shape expected)."""

    def shaped(what: str, value: Any, shape: tuple[int, ...], dtype: Any = np.float64):
        arr = np.asarray(value, dtype=dtype)
        if arr.shape != shape:
            raise ValueError(f"{what}: shape {arr.shape}, expected {shape} at step {step}")
        return arr

    def names(what: str, given: Mapping, expected: list[str]) -> None:
        missing = [n for n in expected if n not in given]
        extra = sorted(set(given) - set(expected))
        if missing or extra:
            raise ValueError(f"{what} at step {step}: missing {missing[:5]}, unknown {extra[:5]}")

    out: list[tuple[str, np.ndarray]] = []
    if data.alignment is not None:
        names("alignment", data.alignment, [p.name for p in vl.pairs])
        scores = np.empty(len(vl.pairs))
        for j, p in enumerate(vl.pairs):
            res = data.alignment[p.name]
            diag = shaped(f"alignment {p.name}", res.diagonal, (p.k,))
            out.append((layout.diagonal_path("alignment", p.name), diag))
            scores[j] = head_mean(diag, vl.score_top)
            if p.blocks > 1:
                out.append(
                    (
                        layout.heads_path(p.name),
                        shaped(f"alignment heads {p.name}", res.heads, (p.blocks, p.k)),
                    )
                )
            if vl.full_matrices:
                out.append(
                    (
                        layout.full_matrix_path("alignment", p.name),
                        shaped(f"alignment matrix {p.name}", res.matrix, (p.k, p.k)),
                    )
                )
        out.append((layout.ALIGNMENT_SCORE, scores))
    if data.agreement is not None:
        names("agreement", data.agreement, [m.name for m in matrices])
        scores = np.empty(len(matrices))
        for j, m in enumerate(matrices):
            k = matrix_k(vl, m.rank)
            res = data.agreement[m.name]
            diag = shaped(f"agreement {m.name}", res.diagonal, (k,))
            out.append((layout.diagonal_path("agreement", m.name), diag))
            scores[j] = head_mean(diag, vl.score_top)
            if vl.full_matrices:
                out.append(
                    (
                        layout.full_matrix_path("agreement", m.name),
                        shaped(f"agreement matrix {m.name}", res.matrix, (k, k)),
                    )
                )
        out.append((layout.AGREEMENT_SCORE, scores))
    if data.vectors is not None:
        names("vectors", data.vectors, [m.name for m in matrices])
        for m in matrices:
            k = matrix_k(vl, m.rank)
            u, v = data.vectors[m.name]
            u = shaped(f"u of {m.name}", u, (m.shape[0], k), layout.VECTOR_DTYPE)
            v = shaped(f"v of {m.name}", v, (m.shape[1], k), layout.VECTOR_DTYPE)
            out += [(layout.vectors_path("u", m.name), u), (layout.vectors_path("v", m.name), v)]
    return out
