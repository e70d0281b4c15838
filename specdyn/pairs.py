"""Pairs of matrices whose singular vectors are compared (SPEC §4).

A `Pair` says which two matrix views feed each other, which side's singular
vectors are compared (``u``: left, output space; ``v``: right, input space) and
which slice of each view is decomposed (the centre tap of a conv kernel, a
head's rows or columns, one half of a bidirectional input). `plan_pairs`
chooses the pairs from architecture presets detected by parameter names,
shapes and ``config.json`` and applies a user's pairs file; `pairs_for` does
it for the first checkpoint under a path. Every pair records the rule that
produced it; pairs that cannot be made are listed with a reason. This module
computes no alignment: it describes the operands, and `Operand.apply` /
`Pair.blocks` cut them out of the view matrices for the engine.

User documentation: ``docs/pairs.md``.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import _pair_presets
from ._types import TensorInfo
from .errors import SpecdynError
from .naming import canonicalize, split_slice
from .views import MatrixView, ViewPlan, plan_views

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "Operand",
    "Pair",
    "PairPlan",
    "PairsFileError",
    "plan_pairs",
    "pairs_for",
    "head_pairs",
    "RULES",
    "SIDES",
]

SIDES = ("u", "v")

# Every rule a pair can carry; `parallel-residual:*` are GPT-NeoX's extra feeds.
RULES = (
    "sequential",
    "conv-centre-tap",
    "lstm-depth",
    "lstm-ih-to-hh",
    "lstm-hh-to-ih",
    "embed-to-qkv",
    "q-k-per-head",
    "v-o-per-head",
    "o-to-mlp-in",
    "mlp-in-to-out",
    "mlp-out-to-next-qkv",
    "parallel-residual:embed-to-mlp-in",
    "parallel-residual:o-to-next-qkv",
    "parallel-residual:o-to-next-mlp-in",
    "parallel-residual:mlp-out-to-next-mlp-in",
    "shape-chain",
    "file",
)

# One step of an operand recipe, applied in order to the view's (out, in) matrix:
#   ("rows", start, stop, step)   m[start:stop:step]
#   ("cols", start, stop, step)   m[:, start:stop:step]
#   ("row_blocks", n)             split the rows into n equal consecutive blocks (heads)
#   ("col_blocks", n)             split the columns into n equal consecutive blocks
# At most one *_blocks step, and it comes last.
OperandOp = tuple


class PairsFileError(SpecdynError):
    """A pairs file does not parse, names an unknown matrix or gives a bad option."""


@dataclass(frozen=True)
class Operand:
    """One side of a pair: a matrix view, the singular vectors compared, and a slice.

    matrix: canonical matrix name (a `MatrixView.name`).
    side: "u" (left singular vectors, the output/row space of the slice) or
        "v" (right singular vectors, the input/column space).
    ops: recipe cutting the decomposed slice(s) out of the view's (out, in)
        matrix (see the module's ``OperandOp`` comment); empty for the whole view.
    shape: (rows, cols) of one slice after `ops`; blocks: how many slices
        (head count for a per-head operand, else 1).
    """

    matrix: str
    side: str
    ops: tuple[OperandOp, ...] = ()
    shape: tuple[int, int] = (0, 0)
    blocks: int = 1

    @property
    def dim(self) -> int:
        """Length of the compared singular vectors (rows for "u", columns for "v")."""
        return self.shape[0] if self.side == "u" else self.shape[1]

    def apply(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        """The slices of this operand, each to be decomposed on its own.

        Args:
            matrix: the view's (out, in) matrix (`MatrixView.extract`), any
                dtype and device.

        Returns:
            `blocks` 2-D tensors of shape `shape` (views of `matrix` where torch
            allows), heads in order.

        Raises:
            SpecdynError: an unknown op, or blocks that do not divide evenly.
        """
        return _apply_operand_ops(matrix, self.ops)


@dataclass(frozen=True)
class Pair:
    """Two operands whose singular vectors are compared, and why.

    name: ``FIRST~SECOND`` with the canonical matrix names; when both are
        slices of one parameter the second is shortened to its slice
        (``…query_key_value.weight[q]~[k]``). Unique within a `PairPlan`.
    first, second: the operands; alignment compares `first.side` vectors of
        `first` with `second.side` vectors of `second` (both of length
        `first.dim == second.dim`).
    rule: one of `RULES`.
    options: what the rule used, as plain values: ``heads``/``kv_heads``
        (per-head pairs: query heads and key/value heads), ``tap`` (conv
        kernel tap indices), ``gate`` (RNN gate letter), ``half`` ("forward"
        or "reverse" input half of a bidirectional layer).
    """

    name: str
    first: Operand
    second: Operand
    rule: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def blocks(
        self, first_matrix: torch.Tensor, second_matrix: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Matched (first slice, second slice) couples whose alignments are averaged.

        With per-head operands of different head counts (grouped-query
        attention) the operand with more heads n_big leads and head i meets
        head i // (n_big / n_small) of the other, so each query head meets its
        key/value head; the result has max(first.blocks, second.blocks) couples.

        Args:
            first_matrix, second_matrix: the (out, in) view matrices of
                `first.matrix` and `second.matrix`.

        Returns:
            list of (a, b) 2-D tensors, a of shape `first.shape`, b of `second.shape`.
        """
        a = self.first.apply(first_matrix)
        b = self.second.apply(second_matrix)
        return [(a[i], b[j]) for i, j in head_pairs(len(a), len(b))]


@dataclass
class PairPlan:
    """The pairs of one run.

    pairs: in forward order of their first operand; skipped: (description,
    reason) of every pair a rule wanted but could not make; preset: the
    detected architecture ("sequential", "lstm", "gpt-neox", "gpt2", "llama",
    "shape-chain", "none"), with ``+file`` when a pairs file changed the
    result; notes: one-line observations (matrices in no pair, a hint to write
    a pairs file, pairs a file replaced or removed).
    """

    pairs: list[Pair]
    skipped: list[tuple[str, str]]
    preset: str
    notes: list[str] = field(default_factory=list)


def head_pairs(n_first: int, n_second: int) -> list[tuple[int, int]]:
    """Which head blocks of two per-head operands meet (grouped-query attention).

    Args:
        n_first, n_second: block counts of the two operands (`Operand.blocks`);
            the larger must be a multiple of the smaller.

    Returns:
        (first index, second index) couples, max(n_first, n_second) of them:
        block i of the operand with more blocks meets block i // group of the
        other, group = larger / smaller (equal counts: (i, i)).
    """
    if n_first >= n_second:
        group = n_first // n_second
        return [(i, i // group) for i in range(n_first)]
    group = n_second // n_first
    return [(j // group, j) for j in range(n_second)]


def plan_pairs(
    plan: ViewPlan,
    infos: Mapping[str, TensorInfo] | None = None,
    *,
    config: Mapping | None = None,
    pairs_file: str | Path | None = None,
    gate: str = "g",
) -> PairPlan:
    """Choose the pairs of a run from its views, its config and a pairs file.

    Presets (SPEC §4, detected in this order): transformers — GPT-NeoX (fused
    interleaved ``query_key_value``; parallel residual from
    ``use_parallel_residual``, default on), GPT-2 (``c_attn``), Llama-style
    (``q_proj``/``k_proj``/``v_proj``/``o_proj``, gated or plain MLP,
    grouped-query attention); LSTM (gate-block views); sequential MLP/VGG (only
    linear and conv views); otherwise a shape chain when consecutive matrices
    in forward order all chain, else no pairs and a note asking for a pairs file.

    Args:
        plan: the run's `ViewPlan` (`specdyn.views.plan_views`).
        infos: raw key → `TensorInfo` of the checkpoint the plan came from;
            lets an error about a raw key in a pairs file name its canonical name.
        config: the checkpoint's ``config.json`` (head counts, parallel residual).
        pairs_file: a TOML pairs file (format in ``docs/pairs.md``) that adds,
            removes or replaces pairs.
        gate: RNN gate block the LSTM preset pairs (LSTM ``i f g o``, GRU ``r z n``).

    Returns:
        `PairPlan`.

    Raises:
        PairsFileError: the pairs file is unreadable or invalid (one line naming
            the file, the entry and what is wrong).
    """
    views = {m.name: m for m in plan.matrices}
    result = _pair_presets.detect(plan, config or {}, gate)
    skipped = list(result.skipped)
    pairs = []
    for spec in result.pairs:
        pair = _finish(spec, views)
        if pair.first.dim != pair.second.dim:
            skipped.append((
                f"{spec.first} → {spec.second}",
                f"dimensions do not match: {pair.first.side} vectors of length "
                f"{pair.first.dim} against {pair.second.side} vectors of length {pair.second.dim}",
            ))  # fmt: skip
        else:
            pairs.append(pair)
    notes = list(result.notes)
    preset = result.preset
    if pairs_file is not None:
        pairs, file_notes = _apply_pairs_file(
            Path(pairs_file), pairs, views, plan, infos, config or {}, gate
        )
        notes.extend(file_notes)
        preset = f"{preset}+file"
    _check_unique(pairs, pairs_file)
    rank = {m.name: i for i, m in enumerate(plan.matrices)}
    pairs.sort(key=lambda p: (rank[p.first.matrix], rank[p.second.matrix]))
    paired = {p.first.matrix for p in pairs} | {p.second.matrix for p in pairs}
    unpaired = [
        m.name for m in plan.matrices if m.name not in paired and not _is_part_of(m, paired)
    ]
    if pairs and unpaired:
        notes.append(f"matrices in no pair (no alignment for them): {', '.join(unpaired)}")
    return PairPlan(pairs=pairs, skipped=skipped, preset=preset, notes=notes)


def pairs_for(
    path: str | Path, *, pairs_file: str | Path | None = None, gate: str = "g"
) -> PairPlan:
    """The pairs specdyn uses for the checkpoints under `path`.

    Discovers the checkpoints (`specdyn.sources.discover`), reads the tensor
    metadata of the first checkpoint of the first run (no tensor data), plans
    its views (`specdyn.views.plan_views`) and its pairs (`plan_pairs`).

    Args:
        path: a checkpoint file or a folder of checkpoints.
        pairs_file: optional TOML pairs file (``docs/pairs.md``).
        gate: RNN gate block for the LSTM preset.

    Returns:
        `PairPlan`.

    Raises:
        DiscoveryError / CheckpointError: no readable checkpoint under `path`.
        PairsFileError: an invalid pairs file.
        SpecdynError: `gate` is not a gate letter.
    """
    from .sources import discover

    if gate not in _pair_presets.GATE_LETTERS:
        raise SpecdynError(
            f"--gate {gate!r}: not a gate block; use one of "
            f"{', '.join(_pair_presets.GATE_LETTERS)} (LSTM i f g o, GRU r z n)"
        )
    discovery = discover(path)
    ckpt = discovery.runs[0].checkpoints[0]
    with ckpt.open() as reader:
        keys = reader.keys()
        infos = {k: reader.info(k) for k in keys}
    plan = plan_views(infos, config=ckpt.config, source_order=keys)
    return plan_pairs(plan, infos, config=ckpt.config, pairs_file=pairs_file, gate=gate)


# ------------------------------------------------------------------ operands


def _make_operand(view: MatrixView, side: str, ops: Sequence[OperandOp] = ()) -> Operand:
    """An `Operand` of `view` with its slice shape and block count computed from metadata."""
    ops = tuple(tuple(op) for op in ops)
    blocks = _apply_operand_ops(torch.empty(view.shape, device="meta"), ops)
    shape = tuple(int(d) for d in blocks[0].shape)
    return Operand(matrix=view.name, side=side, ops=ops, shape=shape, blocks=len(blocks))


def _pair_name(first: str, second: str) -> str:
    """``first~second``, the second shortened to ``[slice]`` when both slice one parameter."""
    p1, s1 = split_slice(first)
    p2, s2 = split_slice(second)
    if p1 == p2 and s1 is not None and s2 is not None:
        return f"{first}~[{s2}]"
    return f"{first}~{second}"


def _apply_operand_ops(t: torch.Tensor, ops: Sequence[OperandOp]) -> list[torch.Tensor]:
    """Run an operand recipe; returns the list of slices."""
    for op in ops:
        kind = op[0]
        if kind == "rows":
            t = t[op[1] : op[2] : op[3]]
        elif kind == "cols":
            t = t[:, op[1] : op[2] : op[3]]
        elif kind in ("row_blocks", "col_blocks"):
            n = int(op[1])
            axis = 0 if kind == "row_blocks" else 1
            if n < 1 or t.shape[axis] % n:
                raise SpecdynError(
                    f"cannot split {t.shape[axis]} {'rows' if axis == 0 else 'columns'} "
                    f"into {n} equal head blocks"
                )
            return list(torch.chunk(t, n, dim=axis))
        else:
            raise SpecdynError(f"unknown operand operation {kind!r}; re-plan the pairs")
    return [t]


def _finish(spec: _pair_presets.PairSpec, views: Mapping[str, MatrixView]) -> Pair:
    """A `Pair` from a preset's spec (operand shapes computed here)."""
    first = _make_operand(views[spec.first], spec.first_side, spec.first_ops)
    second = _make_operand(views[spec.second], spec.second_side, spec.second_ops)
    return Pair(_pair_name(spec.first, spec.second), first, second, spec.rule, dict(spec.options))


def _is_part_of(view: MatrixView, paired: set[str]) -> bool:
    """A whole fused matrix counts as paired when one of its slices is, and vice versa."""
    return any(split_slice(name)[0] == view.param for name in paired)


def _check_unique(pairs: Sequence[Pair], pairs_file: str | Path | None) -> None:
    """Two pairs with one name would overwrite each other's results."""
    seen: set[str] = set()
    for p in pairs:
        if p.name in seen:
            where = f"{pairs_file}: " if pairs_file is not None else ""
            raise PairsFileError(
                f"{where}pair {p.name!r} appears twice; give each (first, second) couple once"
            )
        seen.add(p.name)


# ------------------------------------------------------------------ pairs file

_PAIR_KEYS = {"first", "second", "sides", "heads", "kv_heads", "tap", "gate", "half"}
_TOP_KEYS = {"replace", "remove", "pair"}


def _apply_pairs_file(
    path: Path,
    pairs: list[Pair],
    views: Mapping[str, MatrixView],
    plan: ViewPlan,
    infos: Mapping[str, TensorInfo] | None,
    config: Mapping,
    gate: str,
) -> tuple[list[Pair], list[str]]:
    """Pairs after the file's `replace`, `remove` and `[[pair]]` entries, plus notes."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PairsFileError(f"{path}: cannot read the pairs file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise PairsFileError(f"{path}: not a UTF-8 text file; write the pairs in TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise PairsFileError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PairsFileError(
            f"{path}: unknown top-level key {unknown[0]!r}; allowed: replace, remove, [[pair]]"
        )
    notes: list[str] = []
    replace_all = data.get("replace", False)
    if not isinstance(replace_all, bool):
        raise PairsFileError(f"{path}: 'replace' must be true or false")
    if replace_all:
        notes.append(f"{path}: replace = true; {len(pairs)} preset pair(s) dropped")
        pairs = []
    remove = data.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
        raise PairsFileError(f"{path}: 'remove' must be a list of pair names")
    names = [p.name for p in pairs]
    for name in remove:
        if name not in names:
            raise PairsFileError(f"{path}: remove: no pair named {name!r}{_close(name, names)}")
        pairs = [p for p in pairs if p.name != name]
        notes.append(f"{path}: removed {name}")
    entries = data.get("pair", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PairsFileError(f"{path}: 'pair' must be an array of tables ([[pair]])")
    canon = canonicalize(list(infos), config=config) if infos else {}
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: [[pair]] #{number}"
        new = _file_pair(where, entry, views, plan, canon, gate)
        old = next((i for i, p in enumerate(pairs) if p.name == new.name), None)
        if old is None:
            pairs.append(new)
        else:
            notes.append(f"{path}: replaced {new.name} ({pairs[old].rule})")
            pairs[old] = new
    return pairs, notes


def _file_pair(
    where: str,
    entry: Mapping[str, Any],
    views: Mapping[str, MatrixView],
    plan: ViewPlan,
    canon: Mapping[str, str],
    default_gate: str,
) -> Pair:
    """One validated `[[pair]]` entry as a `Pair` with rule "file"."""
    unknown = sorted(set(entry) - _PAIR_KEYS)
    if unknown:
        raise PairsFileError(
            f"{where}: unknown option {unknown[0]!r}; allowed: {', '.join(sorted(_PAIR_KEYS))}"
        )
    for key in ("first", "second"):
        if not isinstance(entry.get(key), str):
            raise PairsFileError(f"{where}: '{key}' (a matrix name) is required")
    sides = entry.get("sides", "uv")
    if not isinstance(sides, str) or len(sides) != 2 or any(s not in SIDES for s in sides):
        raise PairsFileError(f'{where}: sides {sides!r}: write two letters of u/v, e.g. "uv"')
    gate = entry.get("gate", default_gate)
    if gate not in _pair_presets.GATE_LETTERS:
        raise PairsFileError(
            f"{where}: gate {gate!r}: use one of {', '.join(_pair_presets.GATE_LETTERS)}"
        )
    first = _resolve(where, "first", entry["first"], views, plan, canon, gate)
    second = _resolve(where, "second", entry["second"], views, plan, canon, gate)
    options: dict[str, Any] = {}
    if "gate" in entry:
        options["gate"] = gate
    ops: list[list[OperandOp]] = [[], []]
    operands = (first, second)
    for i, view in enumerate(operands):
        side = sides[i]
        if side == "v" and view.kind in ("conv", "conv_transpose"):
            tap = _pair_presets.conv_tap(where, view, entry.get("tap", "centre"), PairsFileError)
            ops[i].append(tap.op)
            options["tap"] = list(tap.index)
    if "tap" in entry and "tap" not in options:
        raise PairsFileError(
            f"{where}: tap: neither operand is a convolution compared on its v side"
        )
    if "half" in entry:
        half = entry["half"]
        if half not in ("forward", "reverse"):
            raise PairsFileError(f'{where}: half {half!r}: use "forward" or "reverse"')
        cols = second.shape[1]
        if sides[1] != "v" or cols % 2:
            raise PairsFileError(
                f"{where}: half: the second operand must be compared on v with an even column count"
            )
        h = cols // 2
        ops[1].append(("cols", 0, h, 1) if half == "forward" else ("cols", h, cols, 1))
        options["half"] = half
    if "heads" in entry or "kv_heads" in entry:
        _head_ops(where, entry, operands, sides, ops, options)
    try:
        a = _make_operand(first, sides[0], ops[0])
        b = _make_operand(second, sides[1], ops[1])
    except SpecdynError as exc:
        raise PairsFileError(f"{where}: {exc}") from None
    if a.dim != b.dim:
        raise PairsFileError(
            f"{where}: {a.matrix} {a.side} vectors have length {a.dim} but {b.matrix} "
            f"{b.side} vectors {b.dim}; pick other sides, a tap, a half or heads"
        )
    return Pair(_pair_name(first.name, second.name), a, b, "file", options)


def _head_ops(where, entry, operands, sides, ops, options) -> None:
    """Per-head block ops: `heads` blocks on the larger compared dim, `kv_heads` on the other."""
    heads = entry.get("heads")
    kv = entry.get("kv_heads", heads)
    for key, value in (("heads", heads), ("kv_heads", kv)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PairsFileError(f"{where}: {key} {value!r}: must be a positive integer")
    if heads % kv:
        raise PairsFileError(f"{where}: heads ({heads}) must be a multiple of kv_heads ({kv})")
    dims = []
    for i, view in enumerate(operands):
        probe = _make_operand(view, sides[i], ops[i])
        dims.append(probe.dim)
    big = max(dims)
    if big % heads:
        raise PairsFileError(f"{where}: heads {heads} does not divide the compared length {big}")
    head_dim = big // heads
    for i, dim in enumerate(dims):
        if dim == heads * head_dim:
            n = heads
        elif dim == kv * head_dim:
            n = kv
        else:
            raise PairsFileError(
                f"{where}: operand {i + 1} has compared length {dim}, neither heads×{head_dim} "
                f"nor kv_heads×{head_dim}; check heads and kv_heads"
            )
        ops[i].append(("row_blocks", n) if sides[i] == "u" else ("col_blocks", n))
    options["heads"] = heads
    options["kv_heads"] = kv


def _resolve(
    where: str,
    key: str,
    name: str,
    views: Mapping[str, MatrixView],
    plan: ViewPlan,
    canon: Mapping[str, str],
    gate: str,
) -> MatrixView:
    """The view a pairs-file name designates, or a one-line error with close names."""
    if name in views:
        return views[name]
    gated = f"{name}[{gate}]"
    if gated in views and views[gated].kind == "rnn_gate":
        return views[gated]
    hint = ""
    if name in canon and canon[name] in views:
        hint = f" (that is a raw checkpoint key; its matrix is {canon[name]!r})"
    else:
        skipped = next((s for s in plan.skipped if name in (s.param, s.matrix)), None)
        if skipped is not None:
            hint = f" (it is not analysed: {skipped.reason})"
        elif name in plan.aliases:
            hint = f" (a tied alias of {plan.aliases[name]!r}; use that name)"
        else:
            hint = _close(name, list(views))
    raise PairsFileError(f"{where}: {key}: unknown matrix {name!r}{hint}")


def _close(name: str, candidates: Sequence[str]) -> str:
    """'; did you mean …' with up to three close names, or ''."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}" if close else ""
