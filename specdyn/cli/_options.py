"""Options shared by several commands, and their parsing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..analysis import ComputeOptions

if TYPE_CHECKING:  # an annotation: its module imports torch, which --help must not wait for
    from ..analysis import VectorOptions

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Workspace folder holding the stores (default: $SPECDYN_HOME, else ./specdyn-runs).",
        show_default=False,
    ),
]
RunArgument = Annotated[
    str | None,
    typer.Argument(help="Run name in the workspace, or a store path (default: the only run)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar or tables; errors and warnings only.")
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_size(text: str | None, option: str = "--max-memory") -> int | None:
    """Bytes from '8GB', '512MiB', '2g' or a plain number; None stays None."""
    if text is None:
        return None
    m = _SIZE.match(text)
    if not m:
        raise typer.BadParameter(
            f"{text!r} is not a size; write e.g. 8GB, 512MiB or 1000000", param_hint=option
        )
    value, unit = float(m.group(1)), (m.group(2) or "").lower()
    binary = "i" in unit
    letter = unit[:1] if unit[:1] in "kmgt" else ""
    scale = 1024 ** " kmgt".index(letter) if (binary and letter) else _UNITS[letter]
    size = int(value * scale)
    if size <= 0:
        raise typer.BadParameter("must be positive", param_hint=option)
    return size


# ----------------------------------------------------------------------------- analysis options
# shared by `analyze` and `pythia`

DeviceOption = Annotated[
    str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.")
]
PrecisionOption = Annotated[
    str, typer.Option(help="float64 (σ within 1e-6·σ1) or float32 (1e-4·σ1, faster on GPUs).")
]
ExactOption = Annotated[
    bool, typer.Option("--exact", help="Force float64 LAPACK for every matrix.")
]
MaxMemoryOption = Annotated[
    str | None,
    typer.Option(help="Bound on what the engine holds on the device at once, e.g. 8GB."),
]
ValuesOnlyOption = Annotated[
    bool, typer.Option("--values-only", help="Singular values only: no alignment or agreement.")
]
# The vector options default to None, "not given": a re-run takes them from the store, a new
# store the defaults named in the help (specdyn.analysis.settled_vectors).
_KEPT = "; a re-run keeps the store's"
VectorsOption = Annotated[
    int | None,
    typer.Option(
        "--vectors",
        min=1,
        show_default=False,
        help=f"Top singular vectors per matrix for alignment and agreement [default: 100{_KEPT}].",
    ),
]
ReferenceOption = Annotated[
    str | None,
    typer.Option(
        show_default=False,
        help="Step the agreement compares against, or 'last' [default: the last checkpoint"
        f"{_KEPT}].",
    ),
]
FullMatricesOption = Annotated[
    bool | None,
    typer.Option(
        "--full-matrices/--no-full-matrices",
        show_default=False,
        help=f"Also store whole k×k alignment/agreement matrices [default: no{_KEPT}].",
    ),
]
SaveVectorsOption = Annotated[
    str | None,
    typer.Option(
        show_default=False,
        help="Steps whose top-k vectors are kept: all, ends (first and last), none "
        f"[default: ends{_KEPT}].",
    ),
]
ScoreTopOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        show_default=False,
        help=f"Alignment/agreement scores average the top N entries [default: 10{_KEPT}].",
    ),
]
PairsOption = Annotated[
    Path | None,
    typer.Option(
        "--pairs",
        help=f"TOML pairs file that adds, removes or replaces pairs [default: none{_KEPT}].",
    ),
]
GateOption = Annotated[
    str | None,
    typer.Option(
        show_default=False,
        help=f"RNN gate block paired (LSTM i f g o, GRU r z n) [default: g{_KEPT}].",
    ),
]


def compute_options(
    device: str, precision: str, exact: bool, max_memory: str | None
) -> ComputeOptions:
    """`ComputeOptions` from the command line (usage errors for bad values)."""
    if precision not in ("float64", "float32"):
        raise typer.BadParameter("choose float64 or float32", param_hint="--precision")
    return ComputeOptions(
        device=device, precision=precision, exact=exact, max_memory=parse_size(max_memory)
    )


def vector_options_from(
    values_only: bool,
    k: int | None,
    reference: str | None,
    full_matrices: bool | None,
    save_vectors: str | None,
    score_top: int | None,
    pairs: Path | None,
    gate: str | None,
) -> VectorOptions | None:
    """`VectorOptions` from the command line (None for what was not given), None with
    --values-only."""
    if save_vectors is not None and save_vectors not in ("all", "ends", "none"):
        raise typer.BadParameter("choose all, ends or none", param_hint="--save-vectors")
    step: int | str | None = reference
    if reference is not None and reference != "last":
        try:
            step = int(reference)
        except ValueError:
            raise typer.BadParameter(
                f"{reference!r}: give a training step or 'last'", param_hint="--reference"
            ) from None
    if values_only:
        return None
    from ..analysis import VectorOptions

    return VectorOptions(
        k=k,
        reference=step,
        full_matrices=full_matrices,
        save_vectors=save_vectors,
        score_top=score_top,
        pairs_file=str(pairs) if pairs is not None else None,
        gate=gate,
    )
