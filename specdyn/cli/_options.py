"""Options shared by several commands, and their parsing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

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
