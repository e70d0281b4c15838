"""Per-step singular-vector work of `analyze`: the store's vector layout from a pair plan,
the operand slices each pair needs, and a step's alignment, agreement and kept vectors
from the top-k vectors of its matrices (docs/metrics.md#vector-metrics, docs/pairs.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ..errors import SpecdynError, option_ref
from ..pairs import GATE_LETTERS, Operand, Pair, PairPlan, head_pairs
from ..store import SAVE_MODES, MatrixAgreement, PairAlignment, PairRecord, VectorLayout
from ..vectors import (
    TopK,
    agreement_diagonal,
    agreement_matrix,
    alignment_diagonal,
    alignment_matrix,
)
from ..views import MatrixView


@dataclass(frozen=True)
class VectorOptions:
    """How singular vectors are analysed (docs/metrics.md#vector-options).

    k: top singular vectors per matrix (diagonals are min(k, R) long);
    reference: the step agreement compares against, or "last" for the run's last
    checkpoint; full_matrices: also store whole k×k alignment and agreement
    matrices; save_vectors: "all" | "ends" | "none", the steps whose top-k
    vectors are kept in the store; score_top: scores average the first
    `score_top` diagonal entries; pairs_file: a TOML pairs file
    (docs/pairs.md); gate: RNN gate block the LSTM preset pairs.

    A field left None is not given: a re-run takes it from the run's store (so a
    resumed analysis never undoes what an earlier one asked for), and a new store
    takes `DEFAULTS`. `resolved` does that; `given` lists the fields that were set.
    """

    k: int | None = None
    reference: int | str | None = None
    full_matrices: bool | None = None
    save_vectors: str | None = None
    score_top: int | None = None
    pairs_file: str | None = None
    gate: str | None = None

    def given(self) -> dict[str, Any]:
        """The fields that were set (not None), by name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    def resolved(self, stored: Mapping[str, Any] | None = None) -> VectorOptions:
        """Every field concrete: given ones as given, the others from `stored` (the store's
        vector settings, `Run.vectors.config`, plus its pairs' gate), else `DEFAULTS`.
        `reference` resolves to a step or None (the last checkpoint)."""
        stored = dict(stored or {})
        if stored.get("reference_rule") == "last":
            stored["reference"] = "last"
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                value = stored.get(f.name, DEFAULTS[f.name])
            out[f.name] = value
        if out["reference"] == "last":
            out["reference"] = None
        return replace(self, **out)

    def validate(self) -> None:
        """Check the options before anything is read.

        Raises:
            SpecdynError: one line naming the unusable option (k or score_top not a
                positive int, an unknown save_vectors mode or gate letter, a
                reference that is not an int step).
        """

        def positive(value: object) -> bool:
            return value is None or (
                isinstance(value, int) and not isinstance(value, bool) and value >= 1
            )

        if not positive(self.k):
            raise SpecdynError(
                f"{option_ref('vectors.k', '--vectors')} {self.k!r}: give a positive number "
                "of singular vectors",
                option="vectors.k",
            )
        if not positive(self.score_top):
            raise SpecdynError(
                f"{option_ref('vectors.score_top', '--score-top')} {self.score_top!r}: "
                "give a positive number",
                option="vectors.score_top",
            )
        if self.save_vectors is not None and self.save_vectors not in SAVE_MODES:
            raise SpecdynError(
                f"{option_ref('vectors.save_vectors', '--save-vectors')} "
                f"{self.save_vectors!r}: use one of {', '.join(SAVE_MODES)}",
                option="vectors.save_vectors",
            )
        if self.gate is not None and self.gate not in GATE_LETTERS:
            raise SpecdynError(
                f"{option_ref('vectors.gate', '--gate')} {self.gate!r}: not a gate block; "
                f"use one of {', '.join(GATE_LETTERS)} (LSTM i f g o, GRU r z n)",
                option="vectors.gate",
            )
        if (
            self.reference is not None
            and self.reference != "last"
            and (isinstance(self.reference, bool) or not isinstance(self.reference, int))
        ):
            raise SpecdynError(
                f"{option_ref('vectors.reference', '--reference')} {self.reference!r}: "
                'give a training step, or "last"',
                option="vectors.reference",
            )


# What a field not given becomes in a new store (reference None: the last checkpoint).
DEFAULTS: dict[str, Any] = {
    "k": 100,
    "reference": None,
    "full_matrices": False,
    "save_vectors": "ends",
    "score_top": 10,
    "pairs_file": None,
    "gate": "g",
}


def operand_key(op: Operand) -> tuple:
    """Operands with equal keys cut the same slices from the same matrix."""
    return (op.matrix, op.ops)


def layout_for(
    pair_plan: PairPlan,
    views: Sequence[MatrixView],
    options: VectorOptions,
    reference: int,
    reference_rule: str,
) -> VectorLayout:
    """The store's `VectorLayout` for a run's pairs and options."""
    records = []
    for p in pair_plan.pairs:
        k = min(options.k, min(p.first.shape), min(p.second.shape))
        records.append(
            PairRecord(
                name=p.name,
                first=p.first.matrix,
                second=p.second.matrix,
                first_side=p.first.side,
                second_side=p.second.side,
                rule=p.rule,
                options=dict(p.options),
                blocks=p.kept_blocks,
                k=int(k),
                dim=int(p.first.dim),
            )
        )
    return VectorLayout(
        k=int(options.k),
        score_top=int(options.score_top),
        reference=int(reference),
        reference_rule=reference_rule,
        full_matrices=bool(options.full_matrices),
        save_vectors=options.save_vectors,
        pairs=tuple(records),
        pairs_preset=pair_plan.preset,
        skipped_pairs=tuple((str(a), str(b)) for a, b in pair_plan.skipped),
        pairs_file=options.pairs_file,
    )


def sliced_operands(pairs: Sequence[Pair]) -> dict[str, list[Operand]]:
    """Per matrix name, the distinct operands that need slices of it decomposed
    (whole-matrix operands, a conv kernel cut to a tap after its SVD among them, reuse
    the matrix's own top-k vectors)."""
    out: dict[str, list[Operand]] = {}
    seen: set[tuple] = set()
    for p in pairs:
        for op in (p.first, p.second):
            if op.ops and operand_key(op) not in seen:
                seen.add(operand_key(op))
                out.setdefault(op.matrix, []).append(op)
    return out


def _side(top: TopK, side: str) -> np.ndarray:
    """The u or v vectors of a TopK."""
    return top.u if side == "u" else top.v


def _compared(
    op: Operand, tops: Mapping[str, TopK], slices: Mapping[tuple, list[TopK]]
) -> list[np.ndarray]:
    """The compared vectors of an operand, one [dim, k'] array per block: its slices' vectors
    (or the whole matrix's), cut to the tap and renormalised when the operand says so."""
    decomposed = slices[operand_key(op)] if op.ops else [tops[op.matrix]]
    if not op.cut and not op.normalize:
        return [_side(top, op.side) for top in decomposed]
    return [block for top in decomposed for block in op.cut_vectors(_side(top, op.side))]


def pair_alignment(
    pair: Pair,
    k: int,
    tops: Mapping[str, TopK],
    slices: Mapping[tuple, list[TopK]],
    full_matrices: bool,
) -> PairAlignment:
    """A pair's alignment at one step from its operands' top-k vectors.

    tops: matrix name → TopK of the whole view; slices: `operand_key` → TopK
    per slice (heads in order). Per-head pairs average the diagonals (and
    matrices) over their head couples (`head_pairs`), a pair with
    ``tap = "all"``/``"mean"`` over its kernel taps. A conv kernel cut to a tap
    (basis "kernel") gives vectors that are not unit: A_ii is still the i-th
    diagonal entry |⟨u_i, v'_i⟩| of the k×k matrix, with v'_i the cut of v_i.
    """
    first = _compared(pair.first, tops, slices)
    second = _compared(pair.second, tops, slices)
    couples = head_pairs(len(first), len(second))
    heads = np.empty((len(couples), k))
    matrix = np.zeros((k, k)) if full_matrices else None
    for row, (i, j) in enumerate(couples):
        a = first[i][:, :k]
        b = second[j][:, :k]
        heads[row] = alignment_diagonal(a, b, k)
        if matrix is not None:
            matrix += alignment_matrix(a, b)
    if matrix is not None:
        matrix /= len(couples)
    return PairAlignment(
        diagonal=heads.mean(axis=0),
        heads=heads if pair.kept_blocks > 1 else None,
        matrix=matrix,
    )


def matrix_agreement(top: TopK, ref: TopK, k: int, full_matrices: bool) -> MatrixAgreement:
    """One matrix's agreement S with its reference-step vectors (k = min(k, R))."""
    diag = agreement_diagonal(top.u, top.v, ref.u, ref.v, k)
    matrix = None
    if full_matrices:
        matrix = agreement_matrix(top.u[:, :k], top.v[:, :k], ref.u[:, :k], ref.v[:, :k])
    return MatrixAgreement(diagonal=diag, matrix=matrix)


class StepTops:
    """What one step keeps of its matrices' top-k vectors, taken from each matrix as soon
    as its vectors exist (then dropped: only what pairs compare is held to the step's end).

    wanted: the step's pending sections ("alignment", "agreement", "vectors"), plus
    "tops" on the reference pass. layout: the store's vector layout (None: no agreement).
    reference: the reference step's full vectors, name → TopK (None on the reference
    pass: each matrix is then its own reference). ranks: name → R = min(shape).
    pair_sides: name → the sides ("u"/"v") of the whole matrix that pairs compare.

    Filled by `take`: full (name → TopK, only with "tops"), agreement (name →
    MatrixAgreement), kept (name → (u, v) float32), held (name → TopK of the sides
    pairs compare).
    """

    def __init__(
        self,
        wanted: set[str],
        layout: VectorLayout | None,
        reference: Mapping[str, TopK] | None,
        ranks: Mapping[str, int],
        pair_sides: Mapping[str, set[str]],
    ) -> None:
        self.wanted = wanted
        self.layout = layout
        self.reference = reference
        self.ranks = ranks
        self.pair_sides = pair_sides
        self.full: dict[str, TopK] = {}
        self.agreement: dict[str, MatrixAgreement] = {}
        self.kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.held: dict[str, TopK] = {}

    def take(self, name: str, top: TopK) -> None:
        """Use the top-k vectors of matrix `name` for every wanted section."""
        if "tops" in self.wanted:
            self.full[name] = top
        if "agreement" in self.wanted and self.layout is not None:
            ref = self.reference[name] if self.reference is not None else top
            k = min(self.layout.k, self.ranks[name])
            self.agreement[name] = matrix_agreement(top, ref, k, self.layout.full_matrices)
        if "vectors" in self.wanted:
            self.kept[name] = (top.u.astype(np.float32), top.v.astype(np.float32))
        if "alignment" in self.wanted and name in self.pair_sides:
            self.held[name] = held_sides(top, self.pair_sides[name])


def whole_matrix_sides(pairs: Sequence[Pair]) -> dict[str, set[str]]:
    """Per matrix name, the sides ("u"/"v") of the whole matrix that pairs compare (the
    only vectors held per step besides the slices')."""
    sides: dict[str, set[str]] = {}
    for pair in pairs:
        for operand in (pair.first, pair.second):
            if not operand.ops:
                sides.setdefault(operand.matrix, set()).add(operand.side)
    return sides


def held_sides(top: TopK, sides: set[str]) -> TopK:
    """`top` with only the vector sides in `sides` kept (the other an empty array)."""
    empty = np.empty((0, 0))
    return TopK(
        top.sigma,
        top.u if "u" in sides else empty,
        top.v if "v" in sides else empty,
        top.method,
    )


def pair_alignments(
    pairs: Sequence[Pair],
    layout: VectorLayout,
    tops: Mapping[str, TopK],
    slices: Mapping[tuple, list[TopK]],
) -> dict[str, PairAlignment]:
    """Every pair's alignment at one step (diagonal length from the store layout)."""
    ks = {p.name: p.k for p in layout.pairs}
    return {
        p.name: pair_alignment(p, ks[p.name], tops, slices, layout.full_matrices) for p in pairs
    }
