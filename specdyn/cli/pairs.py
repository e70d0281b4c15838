"""`specdyn pairs PATH`: the pairs whose singular vectors specdyn compares, and why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._options import JsonOption
from ._output import Output

if TYPE_CHECKING:  # annotations only: the command imports the library when it runs
    from ..pairs import Operand

_GATES = ("i", "f", "g", "o", "r", "z", "n")


def pairs_command(
    path: Annotated[Path, typer.Argument(help="A checkpoint file or a folder of checkpoints.")],
    pairs_file: Annotated[
        Path | None,
        typer.Option("--pairs", help="TOML file adding, removing or replacing pairs."),
    ] = None,
    gate: Annotated[
        str, typer.Option("--gate", help="RNN gate block to pair: LSTM i f g o, GRU r z n.")
    ] = "g",
    json_out: JsonOption = False,
) -> None:
    """Show the matrix pairs used for alignment, the rule behind each and the skipped ones."""
    if gate not in _GATES:
        raise typer.BadParameter(f"{gate!r}: use one of {' '.join(_GATES)}", param_hint="--gate")
    if pairs_file is not None and not pairs_file.is_file():
        raise typer.BadParameter(f"{pairs_file}: no such file", param_hint="--pairs")
    from ..pairs import pairs_for  # torch: imported when a command computes

    out = Output(json_mode=json_out)
    result = pairs_for(path, pairs_file=pairs_file, gate=gate)
    if out.json_mode:
        out.json(
            {
                "preset": result.preset,
                "pairs": result.pairs,
                "skipped": [{"pair": d, "reason": r} for d, r in result.skipped],
                "notes": result.notes,
            }
        )
        return
    out.table(
        f"pairs (preset: {result.preset})",
        ("pair", "first", "second", "rule", "options"),
        [
            (p.name, _operand(p.first), _operand(p.second), p.rule, _options(p.options))
            for p in result.pairs
        ],
    )
    if result.skipped:
        out.table("skipped pairs", ("pair", "reason"), result.skipped)
    for note in result.notes:
        out.line(f"note: {note}")


def _operand(op: Operand) -> str:
    """``name u`` plus the slice, e.g. ``conv2.weight v cols[4:72:9]`` or ``… u ×4 heads``."""
    parts = [op.matrix, op.side]
    for step in (*op.ops, *(("cut", *s) for s in op.cut)):
        cut = step[0] == "cut"
        kind, args = (step[1], step[2:]) if cut else (step[0], step[1:])
        if kind in ("rows", "cols"):
            parts.append(("cut " if cut else "") + f"{kind}[{args[0]}:{args[1]}:{args[2]}]")
        else:
            parts.append(f"{args[0]} {'taps' if kind.endswith('taps') else 'heads'}")
    return " ".join(parts)


def _options(options: dict) -> str:
    """``heads=4 kv_heads=2`` or ``-``."""
    return " ".join(f"{k}={v}" for k, v in options.items()) or "-"
