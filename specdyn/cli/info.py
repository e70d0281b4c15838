"""`specdyn info [RUN]`: what one store holds."""

from __future__ import annotations

from typing import Annotated

import typer

from ..store import open_run
from ._options import HomeOption, JsonOption, RunArgument
from ._output import Output


def info_command(
    run: RunArgument = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
    matrices: Annotated[bool, typer.Option("--matrices", help="Also list every matrix.")] = False,
    pairs: Annotated[
        bool, typer.Option("--pairs", help="Also list every pair with its rule and final score.")
    ] = False,
) -> None:
    """Show what a store holds: steps, matrices, pairs, skipped parameters, provenance."""
    out = Output(json_mode=json_out)
    with open_run(run, home=home) as store:
        summary = store.info()
        rows = []
        if matrices or out.json_mode:
            for name in store.matrices:
                meta = store.matrix_info(name)
                rows.append(meta)
        pair_rows = store.pairs if pairs else []
        if pair_rows and store.steps.size:
            last = store.alignment_score()[-1]
            for row, score in zip(pair_rows, last, strict=True):
                row["last_score"] = None if score != score else float(score)
    if out.json_mode:
        if matrices:
            summary = dict(summary, matrices_detail=rows)
        if pairs:
            summary = dict(summary, pairs_detail=pair_rows)
        out.json(summary)
        return
    out.fields(
        f"run {summary.get('name')}",
        [
            (k, _origins(v) if k == "step_origins" else _short(v))
            for k, v in summary.items()
            if k not in ("provenance", "problems")
        ]
        + [("unreadable checkpoints", len(summary.get("problems", [])) or "none")],
    )
    if summary.get("problems"):
        out.table(
            "checkpoints found but not analysed (re-run analyze once they are fixed)",
            ("source", "kind", "reason"),
            ((p["source"], p["kind"], p["message"]) for p in summary["problems"]),
        )
    if matrices:
        out.table(
            "matrices (forward order)",
            ("name", "kind", "shape", "dtype", "method"),
            (
                (
                    m.get("name"),
                    m.get("kind"),
                    "×".join(map(str, m.get("shape", ()))),
                    m.get("source_dtype"),
                    m.get("method", ""),
                )
                for m in rows
            ),
        )
    if pairs:
        if summary.get("vectors") is None:
            out.err.print("no pairs: the store holds values only (analysed with --values-only)")
            return
        out.table(
            "pairs (forward order)",
            ("pair", "rule", "definition", "heads", "k", "a(t) at the last step"),
            (
                (
                    p["name"],
                    p["rule"],
                    _definition(p.get("definition")),
                    p["blocks"],
                    p["k"],
                    "-" if p.get("last_score") is None else f"{p['last_score']:.3f}",
                )
                for p in pair_rows
            ),
        )


def _definition(definition: dict | None) -> str:
    """A conv pair's alignment definition (``kernel v at tap (1, 1)``); ``-`` for other pairs."""
    if definition is None:
        return "-"
    tap = definition["tap"]
    where = (
        {"all": "every tap", "mean": "mean over taps"}.get(tap) if isinstance(tap, str) else None
    )
    where = where or f"at tap ({', '.join(map(str, tap))})"
    if definition["basis"] == "slice":
        return f"slice SVD {where}"
    return f"kernel v {where}" + (", normalised" if definition["normalize"] else "")


def _origins(origins: dict[str, int]) -> str:
    """Where the steps came from: ``6 from optimizer.bin state step, 1 from name``."""
    return ", ".join(f"{n} from {origin}" for origin, n in origins.items()) or "-"


def _short(value: object) -> str:
    """A compact one-cell rendering of a summary value."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return str(value)
