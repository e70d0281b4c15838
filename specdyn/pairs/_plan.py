"""Pairs of matrices whose singular vectors are compared (docs/pairs.md).

A `Pair` says which two matrix views feed each other, which side's singular
vectors are compared (``u``: left, output space; ``v``: right, input space) and
which slice of each view is decomposed (the centre tap of a conv kernel, a
head's rows or columns, one half of a bidirectional input). `plan_pairs`
chooses the pairs from architecture presets detected by parameter names,
shapes and ``config.json`` and applies a user's pairs file; `pairs_for` does
it for the first checkpoint under a path. Every pair records the rule that
produced it; pairs that cannot be made are listed with a reason. This module
computes no alignment: it describes the operands, and `Operand.apply` /
`Pair.blocks` cut them out of the view matrices for the engine, and
`Operand.cut_vectors` cuts the compared vectors of a flattened conv kernel.

A conv operand compared on its v side follows a `ConvAlignment` definition: by
default (the paper's, appendix D.1) the right singular vectors of the whole
flattened (c_out, c_in·∏k) kernel, each reshaped to (c_in, *k) and cut to the
centre tap, not renormalised; ``basis = "slice"`` decomposes the tap's own
(c_out, c_in) slice instead.

User documentation: ``docs/pairs.md``.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PairsFileError, SpecdynError, option_ref
from ..naming import canonicalize, split_slice
from ..types import TensorInfo
from ..views import MatrixView, ViewPlan, plan_views
from . import _presets as _pair_presets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ConvAlignment",
    "CONV_BASES",
    "TAP_MODES",
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
    "o-to-cross-q",
    "encoder-out-to-cross-kv",
    "block-in-to-shortcut",
    "time-embed",
    "time-embed-to-resnet",
    "unet-skip",
    "shape-chain",
    "file",
)

# One step of an operand recipe, applied in order to the view's (out, in) matrix
# (`Operand.ops`) or to the compared singular vectors, rows = vector entries (`Operand.cut`):
#   ("rows", start, stop, step)   m[start:stop:step]
#   ("cols", start, stop, step)   m[:, start:stop:step]
#   ("row_blocks", n)             split the rows into n equal consecutive blocks (heads)
#   ("col_blocks", n)             split the columns into n equal consecutive blocks
#   ("row_taps", n)               split the rows into n strided slices m[t::n] (conv taps)
#   ("col_taps", n)               split the columns into n strided slices m[:, t::n]
# At most one *_blocks / *_taps step, and it comes last.
OperandOp = tuple

_BLOCK_OPS = ("row_blocks", "col_blocks", "row_taps", "col_taps")
# the same selection made on the rows of v instead of the columns of the matrix
_ON_VECTORS = {"cols": "rows", "col_blocks": "row_blocks", "col_taps": "row_taps"}

CONV_BASES = ("kernel", "slice")
TAP_MODES = _pair_presets.TAP_MODES


@dataclass(frozen=True)
class ConvAlignment:
    """How a convolution compared on its v side becomes c_in-long vectors.

    basis: "kernel" (default, the paper's appendix D.1): the right singular
        vectors of the whole flattened (c_out, c_in·∏k) kernel — the SVD its
        spectrum comes from — each reshaped to (c_in, *k) (c_in-major) and cut
        to the tap; "slice": the right singular vectors of the tap's own
        (c_out, c_in) slice W[:, :, *tap].
    tap: "centre" (k//2 in every spatial dim; for an even k the upper of the
        two central taps, k = 4 → 2), explicit kernel indices (a list), "all"
        (every tap kept as a block, the pair's diagonal their mean) or "mean"
        (only the mean over taps kept).
    normalize: rescale every cut vector to unit length (basis "kernel" only;
        the vectors of a slice are unit already).
    """

    basis: str = "kernel"
    tap: str | list[int] = "centre"
    normalize: bool = False


@dataclass(frozen=True)
class Operand:
    """One side of a pair: a matrix view, the singular vectors compared, and a slice.

    matrix: canonical matrix name (a `MatrixView.name`).
    side: "u" (left singular vectors, the output/row space of the slice) or
        "v" (right singular vectors, the input/column space).
    ops: recipe cutting the decomposed slice(s) out of the view's (out, in)
        matrix (see the module's ``OperandOp`` comment); empty for the whole view.
    shape: (rows, cols) of one slice after `ops`; blocks: how many blocks of
        compared vectors (head count for a per-head operand, tap count with
        ``tap = "all"``/``"mean"``, else 1).
    cut: recipe applied to the compared singular vectors of each decomposed
        slice (rows = vector entries): a conv kernel's tap with the "kernel"
        basis; empty otherwise.
    normalize: rescale every cut vector to unit length.
    """

    matrix: str
    side: str
    ops: tuple[OperandOp, ...] = ()
    shape: tuple[int, int] = (0, 0)
    blocks: int = 1
    cut: tuple[OperandOp, ...] = ()
    normalize: bool = False

    @property
    def dim(self) -> int:
        """Length of the compared singular vectors (rows for "u", columns for "v"), after `cut`."""
        full = self.shape[0] if self.side == "u" else self.shape[1]
        if not self.cut:
            return full
        return int(_apply_operand_ops(torch.empty((full, 1), device="meta"), self.cut)[0].shape[0])

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

    def cut_vectors(self, vectors: np.ndarray) -> list[np.ndarray]:
        """The compared vectors of one decomposed slice, after `cut` and `normalize`.

        Args:
            vectors: float [d, k'] columns, the `side` singular vectors of one
                slice from `apply` (d = the slice's rows for "u", columns for "v").

        Returns:
            one float64 [dim, k'] array per block of the cut (taps in flat
            row-major kernel order): views of `vectors` without `normalize`;
            with it, each column divided by its norm (NaN where the cut is all
            zeros, as its direction is undefined).
        """
        arr = np.asarray(vectors, dtype=np.float64)
        blocks = [arr]
        if self.cut:
            blocks = [t.numpy() for t in _apply_operand_ops(torch.from_numpy(arr), self.cut)]
        if not self.normalize:
            return blocks
        out = []
        for block in blocks:
            norms = np.linalg.norm(block, axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                out.append(np.where(norms > 0, block / norms, np.nan))
        return out


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
        kernel tap indices, "all" or "mean"), ``basis`` ("kernel" or "slice")
        and ``normalize`` (the `ConvAlignment` of a conv operand on v),
        ``gate`` (RNN gate letter), ``half`` ("forward" or "reverse" input
        half of a bidirectional layer).
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

    @property
    def kept_blocks(self) -> int:
        """Blocks whose alignments are stored one by one (``/alignment/heads``): the
        block couples, or 1 when only their mean is kept (``tap = "mean"``)."""
        if self.options.get("tap") == "mean":
            return 1
        return max(self.first.blocks, self.second.blocks)


@dataclass
class PairPlan:
    """The pairs of one run.

    pairs: in forward order of their first operand; skipped: (description,
    reason) of every pair a rule wanted but could not make; preset: the
    detected architecture ("unet", "gpt-neox", "gpt2", "llama", "bert", "vit", "t5",
    "whisper", "mixtral", "transformer", "lstm", "resnet", "sequential", "shape-chain",
    "none"), with ``+file`` when a pairs file changed the
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

    Presets (docs/pairs.md#presets, detected in this order): diffusers UNets (resnets,
    attention and transformer blocks, time embedding, the up path's skip concat); transformers
    — any attention block recognised by its parameter names, one chain per encoder/decoder
    stack, cross-attention K/V from the encoder output, experts as MLPs of their own
    (BERT, ViT, T5, Whisper, Mixtral, …), and as before GPT-NeoX (fused
    interleaved ``query_key_value``; parallel residual from
    ``use_parallel_residual``, default on), GPT-2 (``c_attn``), Llama-style
    (``q_proj``/``k_proj``/``v_proj``/``o_proj``, gated or plain MLP,
    grouped-query attention); LSTM (gate-block views); ResNets (shortcuts are side
    branches); sequential MLP/VGG (only linear and conv views); otherwise a shape chain
    when consecutive matrices in forward order all chain, else no pairs and a note asking
    for a pairs file.

    Args:
        plan: the run's `ViewPlan` (`specdyn.views.plan_views`).
        infos: raw key → `TensorInfo` of the checkpoint the plan came from;
            lets an error about a raw key in a pairs file name its canonical name.
        config: the checkpoint's ``config.json`` (head counts, parallel residual).
        pairs_file: a TOML pairs file (format in ``docs/pairs.md``) that adds,
            removes or replaces pairs and sets the conv alignment definition
            (``[conv]`` for every pair, or per ``[[pair]]``).
        gate: RNN gate block the LSTM preset pairs (LSTM ``i f g o``, GRU ``r z n``).

    Returns:
        `PairPlan`.

    Raises:
        PairsFileError: the pairs file is unreadable or invalid (one line naming
            the file, the entry and what is wrong).
    """
    views = {m.name: m for m in plan.matrices}
    data = _read_pairs_file(Path(pairs_file)) if pairs_file is not None else {}
    conv = _conv_defaults(f"{pairs_file}: [conv]", data.get("conv", {}))
    result = _pair_presets.detect(plan, config or {}, gate)
    skipped = list(result.skipped)
    pairs = []
    for spec in result.pairs:
        where = f"{pairs_file}: [conv] for {spec.first} → {spec.second}"
        pair = _finish(spec, views, conv, where)
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
            Path(pairs_file), data, pairs, views, plan, infos, config or {}, gate, conv
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
    from ..sources import discover

    if gate not in _pair_presets.GATE_LETTERS:
        raise SpecdynError(
            f"{option_ref('gate')} {gate!r}: not a gate block; use one of "
            f"{', '.join(_pair_presets.GATE_LETTERS)} (LSTM i f g o, GRU r z n)",
            option="gate",
        )
    discovery = discover(path)
    ckpt = discovery.runs[0].checkpoints[0]
    with ckpt.open() as reader:
        keys = reader.keys()
        infos = {k: reader.info(k) for k in keys}
    plan = plan_views(infos, config=ckpt.config, source_order=keys)
    return plan_pairs(plan, infos, config=ckpt.config, pairs_file=pairs_file, gate=gate)


# ------------------------------------------------------------------ operands


def _make_operand(
    view: MatrixView, side: str, ops: Sequence[OperandOp] = (), conv: ConvAlignment | None = None
) -> Operand:
    """An `Operand` of `view` with its slice shape and block count computed from metadata;
    with a "kernel" `conv` definition the column ops cut the whole view's v instead."""
    ops = tuple(tuple(op) for op in ops)
    cut: tuple[OperandOp, ...] = ()
    normalize = False
    if conv is not None and conv.basis == "kernel":
        # the same columns, selected from the rows of the whole kernel's v after its SVD
        cut = tuple((_ON_VECTORS[op[0]], *op[1:]) for op in ops)
        ops = ()
        normalize = bool(conv.normalize)
    slices = _apply_operand_ops(torch.empty(view.shape, device="meta"), ops)
    shape = tuple(int(d) for d in slices[0].shape)
    n_cut = 1
    if cut:
        full = shape[0] if side == "u" else shape[1]
        n_cut = len(_apply_operand_ops(torch.empty((full, 1), device="meta"), cut))
    return Operand(
        matrix=view.name,
        side=side,
        ops=ops,
        shape=shape,
        blocks=len(slices) * n_cut,
        cut=cut,
        normalize=normalize,
    )


def _conv_operand_ops(
    where: str, view: MatrixView, conv: ConvAlignment, error: type[Exception] = SpecdynError
) -> tuple[list[OperandOp], dict[str, Any]]:
    """The tap op of a conv operand compared on v and the options recording its definition."""
    tap = _pair_presets.conv_tap(where, view, conv.tap, error)
    options = {"tap": tap.option, "basis": conv.basis, "normalize": bool(conv.normalize)}
    return [tap.op], options


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
        elif kind in _BLOCK_OPS:
            n = int(op[1])
            axis = 0 if kind.startswith("row") else 1
            what = "head blocks" if kind.endswith("blocks") else "kernel taps"
            if n < 1 or t.shape[axis] % n:
                raise SpecdynError(
                    f"cannot split {t.shape[axis]} {'rows' if axis == 0 else 'columns'} "
                    f"into {n} equal {what}"
                )
            if kind.endswith("blocks"):
                return list(torch.chunk(t, n, dim=axis))
            return [t[i::n] if axis == 0 else t[:, i::n] for i in range(n)]
        else:
            raise SpecdynError(f"unknown operand operation {kind!r}; re-plan the pairs")
    return [t]


def _finish(
    spec: _pair_presets.PairSpec,
    views: Mapping[str, MatrixView],
    conv: ConvAlignment,
    where: str,
) -> Pair:
    """A `Pair` from a preset's spec (operand shapes computed here); a conv operand on v
    gets its tap and the `conv` definition."""
    options = dict(spec.options)
    operands = []
    for name, side, ops in (
        (spec.first, spec.first_side, spec.first_ops),
        (spec.second, spec.second_side, spec.second_ops),
    ):
        view = views[name]
        definition = None
        if side == "v" and _pair_presets.is_conv(view):
            tap_ops, conv_options = _conv_operand_ops(where, view, conv, PairsFileError)
            # a preset's ops on a conv select input channels: kernel columns c·∏k … (c+1)·∏k
            taps = _pair_presets.conv_taps(view)
            channels = tuple(("cols", op[1] * taps, op[2] * taps, 1) for op in ops)
            ops = (*channels, *tap_ops)
            options.update(conv_options)
            definition = conv
        operands.append(_make_operand(view, side, ops, definition))
    return Pair(_pair_name(spec.first, spec.second), operands[0], operands[1], spec.rule, options)


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

_CONV_KEYS = {"basis", "tap", "normalize"}
_PAIR_KEYS = {"first", "second", "sides", "heads", "kv_heads", "gate", "half"} | _CONV_KEYS
_TOP_KEYS = {"replace", "remove", "pair", "conv"}


def _read_pairs_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of a pairs file, its top-level keys checked."""
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
            f"{path}: unknown top-level key {unknown[0]!r}; allowed: replace, remove, [conv], "
            "[[pair]]"
        )
    if not isinstance(data.get("conv", {}), dict):
        raise PairsFileError(f"{path}: 'conv' must be a table ([conv]) of basis, tap, normalize")
    return data


def _conv_defaults(
    where: str, table: Mapping[str, Any], base: ConvAlignment = ConvAlignment()
) -> ConvAlignment:
    """`base` with the basis, tap and normalize a `[conv]` table or `[[pair]]` entry sets."""
    unknown = sorted(set(table) - _CONV_KEYS)
    if unknown:
        raise PairsFileError(
            f"{where}: unknown option {unknown[0]!r}; allowed: {', '.join(sorted(_CONV_KEYS))}"
        )
    basis = table.get("basis", base.basis)
    if basis not in CONV_BASES:
        raise PairsFileError(f'{where}: basis {basis!r}: use "kernel" (the paper\'s) or "slice"')
    tap = table.get("tap", base.tap)
    if not (
        tap in (*TAP_MODES, "center")
        or (
            isinstance(tap, list)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in tap)
        )
    ):
        raise PairsFileError(
            f'{where}: tap {tap!r}: write "centre", "all", "mean" or a list of kernel indices'
        )
    # a global normalize = true is inherited by kernel-basis pairs, never by slice ones
    normalize = table.get("normalize", base.normalize and basis == "kernel")
    if not isinstance(normalize, bool):
        raise PairsFileError(f"{where}: normalize must be true or false")
    if normalize and basis == "slice":
        raise PairsFileError(
            f'{where}: normalize = true applies to basis = "kernel" only (the vectors of a '
            "slice are unit already)"
        )
    return ConvAlignment(basis=basis, tap=tap, normalize=normalize)


def _apply_pairs_file(
    path: Path,
    data: Mapping[str, Any],
    pairs: list[Pair],
    views: Mapping[str, MatrixView],
    plan: ViewPlan,
    infos: Mapping[str, TensorInfo] | None,
    config: Mapping,
    gate: str,
    conv: ConvAlignment,
) -> tuple[list[Pair], list[str]]:
    """Pairs after the file's `replace`, `remove` and `[[pair]]` entries, plus notes."""
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
        new = _file_pair(where, entry, views, plan, canon, gate, conv)
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
    default_conv: ConvAlignment,
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
    conv = _conv_defaults(where, {k: entry[k] for k in _CONV_KEYS if k in entry}, default_conv)
    convs: list[ConvAlignment | None] = [None, None]
    for i, view in enumerate(operands):
        if sides[i] == "v" and _pair_presets.is_conv(view):
            tap_ops, conv_options = _conv_operand_ops(where, view, conv, PairsFileError)
            ops[i].extend(tap_ops)
            options.update(conv_options)
            convs[i] = conv
    given = sorted(_CONV_KEYS & set(entry))
    if given and "tap" not in options:
        raise PairsFileError(
            f"{where}: {given[0]}: neither operand is a convolution compared on its v side"
        )
    if options.get("tap") in ("all", "mean") and ("half" in entry or "heads" in entry):
        raise PairsFileError(
            f'{where}: tap = "{options["tap"]}" cannot be combined with half or heads; '
            "give a single tap"
        )
    if "half" in entry:
        half = entry["half"]
        if half not in ("forward", "reverse"):
            raise PairsFileError(f'{where}: half {half!r}: use "forward" or "reverse"')
        # the columns left after the ops so far (a conv's tap leaves c_in of them)
        cols = _make_operand(second, sides[1], ops[1]).shape[1]
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
        a = _make_operand(first, sides[0], ops[0], convs[0])
        b = _make_operand(second, sides[1], ops[1], convs[1])
    except SpecdynError as exc:
        raise PairsFileError(f"{where}: {exc.message}", file=exc.file) from None
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
