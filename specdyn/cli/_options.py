"""Options shared by several commands, and their parsing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ..analysis import ComputeOptions, VectorOptions

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Workspace folder holding the stores (default: $SPECDYN_HOME, else ./specdyn-runs).",
        show_default=False,
    ),
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
VectorsOption = Annotated[
    int,
    typer.Option(
        "--vectors", min=1, help="Top singular vectors per matrix for alignment and agreement."
    ),
]
ReferenceOption = Annotated[
    int | None,
    typer.Option(help="Step the agreement compares against (default: the last checkpoint)."),
]
FullMatricesOption = Annotated[
    bool, typer.Option("--full-matrices", help="Also store whole k×k alignment/agreement matrices.")
]
SaveVectorsOption = Annotated[
    str, typer.Option(help="Steps whose top-k vectors are kept: all, ends (first and last), none.")
]
ScoreTopOption = Annotated[
    int, typer.Option(min=1, help="Alignment/agreement scores average the top N entries.")
]
PairsOption = Annotated[
    Path | None,
    typer.Option("--pairs", help="TOML pairs file that adds, removes or replaces pairs."),
]
GateOption = Annotated[str, typer.Option(help="RNN gate block paired (LSTM i f g o, GRU r z n).")]


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
    k: int,
    reference: int | None,
    full_matrices: bool,
    save_vectors: str,
    score_top: int,
    pairs: Path | None,
    gate: str,
) -> VectorOptions | None:
    """`VectorOptions` from the command line, None with --values-only."""
    if save_vectors not in ("all", "ends", "none"):
        raise typer.BadParameter("choose all, ends or none", param_hint="--save-vectors")
    if values_only:
        return None
    return VectorOptions(
        k=k,
        reference=reference,
        full_matrices=full_matrices,
        save_vectors=save_vectors,
        score_top=score_top,
        pairs_file=str(pairs) if pairs is not None else None,
        gate=gate,
    )
