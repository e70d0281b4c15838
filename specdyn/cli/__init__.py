"""The `specdyn` command line: one file per command, one output layer.

Every command validates its options, calls one public library function and
renders the result through `_output.Output`. Errors print one line and exit
non-zero; `SPECDYN_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer
import typer.main

from ..errors import SpecdynError
from ..version import __version__
from . import analyze as _analyze_cmd
from . import compare as _compare_cmd
from . import demo as _demo_cmd
from . import export as _export_cmd
from . import info as _info_cmd
from . import pairs as _pairs_cmd
from . import plot as _plot_cmd
from . import prune as _prune_cmd
from . import pythia as _pythia_cmd
from . import runs as _runs_cmd
from . import verify as _verify_cmd
from ._output import finish, interrupted_line, printable

__all__ = ["app", "main"]

# Usage errors are click's ClickException; recent typer vendors click, older
# typer uses the click package: take the class from typer's own hierarchy.
_UsageProblem = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(
    name="specdyn",
    help="Spectral dynamics of weights: singular values and vectors of every weight matrix over training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("analyze")(_analyze_cmd.analyze_command)
app.command("runs")(_runs_cmd.runs_command)
app.command("info")(_info_cmd.info_command)
app.command("pairs")(_pairs_cmd.pairs_command)
app.command("plot")(_plot_cmd.plot_command)
app.command("pythia")(_pythia_cmd.pythia_command)
app.command("prune")(_prune_cmd.prune_command)
app.command("compare")(_compare_cmd.compare_command)
app.command("verify")(_verify_cmd.verify_command)
app.command("export")(_export_cmd.export_command)
app.add_typer(_demo_cmd.demo_app, name="demo")


def _debug() -> bool:
    """Whether SPECDYN_DEBUG asks for tracebacks."""
    return os.environ.get("SPECDYN_DEBUG", "") not in ("", "0", "false", "no")


def _plain_flags(command) -> None:
    """Boolean flags take no value: show no ``<bool>`` placeholder for them in --help."""
    for param in getattr(command, "params", ()):
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help = command.get_help_option  # click builds --help afresh for each context

    def plain_help(ctx):
        option = make_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = plain_help
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub)


def _show_version(value: bool) -> None:
    """`specdyn --version`: the version, then exit."""
    if value:
        print(f"specdyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Spectral dynamics of weights: singular values and vectors of every weight matrix over training."""


def _asks_json(argv: list[str] | None) -> bool:
    """Whether the command line has --json among its options (before any ``--``)."""
    args = sys.argv[1:] if argv is None else argv
    options = args[: args.index("--")] if "--" in args else args
    return "--json" in options


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns (and exits with) the process exit code."""
    command = typer.main.get_command(app)
    _plain_flags(command)
    code = 2
    error: tuple[str, str] | None = None  # (one line, class name) for `--json` failures
    try:
        code = command.main(args=argv, prog_name="specdyn", standalone_mode=False)
        code = code if isinstance(code, int) else 0
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit status 130
            print(f"specdyn: {interrupted_line()}", file=sys.stderr)
    except _UsageProblem as exc:
        exc.message = printable(exc.message)  # it may quote a path or value as given
        exc.show()
        code = exc.exit_code
        error = (exc.format_message(), type(exc).__name__)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        print(f"specdyn: {interrupted_line()}", file=sys.stderr)
        code = 130
    except SpecdynError as exc:
        if _debug():
            traceback.print_exc()
        # the library names options as Python parameters; on the command line, as flags
        line = printable(exc.render(cli=True))
        print(f"specdyn: error: {line}", file=sys.stderr)
        code = exc.exit_code
        error = (line, type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if _debug():
            traceback.print_exc()
        line = (
            f"internal error: {type(exc).__name__}: {printable(exc)} "
            "(set SPECDYN_DEBUG=1 for the traceback, and please report it)"
        )
        print(f"specdyn: {line}", file=sys.stderr)
        code = 2
        error = (line, type(exc).__name__)
    finally:
        finish(succeeded=code == 0, error=error, json_asked=_asks_json(argv))
    if argv is None:
        sys.exit(code)
    return code
