"""Errors in one place: structured fields, and option names worded for whoever called."""

from __future__ import annotations

import ast
import pickle
import re
import sys
from pathlib import Path

import pytest
import typer.main

import specdyn
from specdyn import errors
from specdyn.cli import app, main
from specdyn.errors import SpecdynError, StepSpecError, command_ref, option_ref


def test_an_option_reads_as_a_parameter_in_python_and_as_a_flag_on_the_cli():
    err = SpecdynError(
        f"{option_ref('max_memory')}=1000: raise {option_ref('max_memory')}; or "
        f"{option_ref('vectors=None', '--values-only')}; see {command_ref('analyze')}",
        option="max_memory",
        file="ckpt/step-10.pt",
        step=10,
    )
    assert str(err) == ("max_memory=1000: raise max_memory; or vectors=None; see specdyn.analyze()")
    assert err.render(cli=True) == (
        "--max-memory=1000: raise --max-memory; or --values-only; see specdyn analyze"
    )
    assert err.options == ("max_memory", "max_memory", "vectors=None")
    assert (err.file, err.step, err.option) == ("ckpt/step-10.pt", 10, "max_memory")


def test_user_text_in_a_message_is_never_taken_for_an_option():
    # braces, backslashes and the marker's own separator character in a value stay as given
    value = "a{b}\\x1f--c\x1fd"
    err = SpecdynError(f"{option_ref('steps')} {value!r}: cannot parse")
    assert str(err) == f"steps {value!r}: cannot parse"
    assert err.render(cli=True) == f"--steps {value!r}: cannot parse"


def test_a_steps_error_names_its_option_and_survives_pickling():
    with pytest.raises(StepSpecError) as info:
        specdyn.select_steps([0, 10, 20], "3:x")
    assert info.value.option == "steps"
    assert str(info.value).startswith("steps '3:x'")
    again = pickle.loads(pickle.dumps(info.value))  # worker processes send errors back
    assert str(again) == str(info.value) and again.render(cli=True).startswith("--steps")


def test_every_error_class_lives_in_errors_and_is_re_exported_where_it_is_raised():
    import specdyn.demo
    import specdyn.pairs
    import specdyn.plots
    import specdyn.prune
    import specdyn.pythia

    assert specdyn.pairs.PairsFileError is errors.PairsFileError
    assert specdyn.pythia.HubError is errors.HubError
    assert specdyn.prune.PruneError is errors.PruneError
    assert specdyn.demo.DemoError is errors.DemoError
    assert specdyn.plots.PlotError is errors.PlotError
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, SpecdynError) and value.__module__ == "specdyn.errors"
    elsewhere = [
        f"{path.relative_to(LIBRARY.parent)}:{node.lineno}: {node.name}"
        for path in sorted(LIBRARY.rglob("*.py"))
        if path.name != "errors.py" or path.parent != LIBRARY
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Error")
    ]
    assert not elsewhere, elsewhere


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mlp-wd"


def test_the_cli_words_a_library_error_in_flags(tmp_path, capsys):
    code = main(["analyze", str(FIXTURE), "--home", str(tmp_path / "h"), "--steps", "3:x"])
    err = capsys.readouterr().err
    assert code != 0 and "--steps '3:x'" in err and "Traceback" not in err


# ------------------------------------------------- no CLI wording in library messages

LIBRARY = Path(specdyn.__file__).resolve().parent
COMMANDS = sorted(typer.main.get_command(app).commands)  # analyze, compare, info, ...
# a flag (--steps), or "--" just before an f-string placeholder (f"--{name}")
FLAG = re.compile(r"(?<![\w-])--([a-z]|$)")
COMMAND = re.compile(rf"\bspecdyn ({'|'.join(COMMANDS)})\b")
REFS = {"option_ref", "command_ref"}  # their arguments are where flags and commands belong
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _texts(node: ast.AST):
    """The string constants under `node` (f-string parts too), but for ref arguments."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in REFS:
            continue
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            yield n
        stack.extend(ast.iter_child_nodes(n))


def _own_nodes(scope: ast.AST):
    """The nodes of a module or function, without those of the functions and classes in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, (*FUNCTIONS, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(n))


def _assigned(nodes) -> dict[str, list[ast.AST]]:
    """Variable name → the values assigned to it among `nodes`."""
    values: dict[str, list[ast.AST]] = {}
    for n in nodes:
        if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and n.value is not None:
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    values.setdefault(t.id, []).append(n.value)
    return values


def cli_wording_in_raises(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string that a `raise` of `source` can put in its message and
    that names a CLI flag or a ``specdyn <command>``: the raise's own strings, those of a
    variable of the same function (or module) that it raises, and those a function of the
    module returns when the raise calls it (a message built by a helper)."""
    tree = ast.parse(source)
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, FUNCTIONS[:2])}
    module_values = _assigned(tree.body)
    found = set()
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, FUNCTIONS))]:
        nodes = list(_own_nodes(scope))
        raises = [n.exc for n in nodes if isinstance(n, ast.Raise) and n.exc is not None]
        if not raises:
            continue
        names = {n.id for r in raises for n in ast.walk(r) if isinstance(n, ast.Name)}
        called = {
            n.func.id
            for r in raises
            for n in ast.walk(r)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        local_values = _assigned(nodes)
        messages = list(raises)
        for name in names:
            messages += local_values.get(name) or module_values.get(name, [])
        for name in called & set(functions):
            messages += [n.value for n in ast.walk(functions[name]) if isinstance(n, ast.Return)]
        for message in messages:
            for text in _texts(message):
                if text.value and (FLAG.search(text.value) or COMMAND.search(text.value)):
                    found.add((text.lineno, text.value))
    return sorted(found)


def test_the_scan_finds_cli_wording_however_the_message_is_built():
    source = """
HINT = "use --home"
def literal():
    raise StoreError("no store; use --overwrite")
def formatted(name):
    raise StoreError(f"{name}: run specdyn analyze first")
def placeholder(what):
    raise PlotError(f"--{what} is not a regex")
def variable(path):
    message = f"{path}: pass --metrics LOG"
    raise StoreError(message)
def module_constant():
    raise StoreError(HINT)
def helper(kind):
    return f"the {kind} figure needs --matrix NAME"
def built(kind):
    raise PlotError(helper(kind))
def fine(path, notes):
    notes.append(Note("k", "a note may say --values-only"))
    raise StoreError(f"{path}: use {option_ref('overwrite=True', '--overwrite')}; "
                     f"see {command_ref('analyze')} or the specdyn store docs")
"""
    # every way of building a message is caught; the refs, the note and "specdyn store" are not
    assert cli_wording_in_raises(source) == [
        (2, "use --home"),
        (4, "no store; use --overwrite"),
        (6, ": run specdyn analyze first"),
        (8, "--"),
        (10, ": pass --metrics LOG"),
        (15, " figure needs --matrix NAME"),
    ]


def test_library_messages_name_flags_and_commands_only_through_refs():
    """Library errors speak in parameter names; a flag or ``specdyn <command>`` written
    into a message would reach a Python caller as is (use option_ref / command_ref)."""
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if "cli" in path.relative_to(LIBRARY).parts:
            continue
        for line, text in cli_wording_in_raises(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(LIBRARY.parent)}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------- a missing optional extra


def test_a_missing_extra_is_one_typed_line(monkeypatch):
    from specdyn.errors import MissingExtraError
    from specdyn.extras import EXTRAS, require_extra

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an uninstalled module reads as
    with pytest.raises(MissingExtraError) as info:
        require_extra("pyarrow.parquet", "pandas", "export to parquet")
    err = info.value
    assert isinstance(err, SpecdynError)
    assert (err.module, err.extra, err.what) == ("pyarrow", "pandas", "export to parquet")
    assert str(err) == (
        "export to parquet needs pyarrow, which is not installed: pip install 'specdyn[pandas]'"
    )
    assert err.render(cli=True) == str(err) and "\n" not in str(err)
    assert again_equal(err)
    assert "pyarrow" in EXTRAS["pandas"]  # the extra named installs the module
    assert require_extra("json", "pandas", "a test").dumps([1]) == "[1]"  # installed: the module


def test_a_missing_extra_asked_for_by_an_option_names_it_as_the_caller_does(monkeypatch):
    from specdyn.extras import require_extra

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(errors.MissingExtraError) as info:
        require_extra(
            "distributed",
            "dist",
            option_ref("scheduler"),
            name="dask.distributed",
            option="scheduler",
        )
    err = info.value
    assert str(err) == (
        "scheduler needs dask.distributed, which is not installed: pip install 'specdyn[dist]'"
    )
    assert err.render(cli=True).startswith("--scheduler needs dask.distributed")
    assert (err.module, err.option, err.options) == ("distributed", "scheduler", ("scheduler",))
    again = pickle.loads(pickle.dumps(err))
    assert again.render(cli=True) == err.render(cli=True) and again.option == "scheduler"


def again_equal(err) -> bool:
    """The error survives pickling (worker processes send errors back) with its fields."""
    again = pickle.loads(pickle.dumps(err))
    return (str(again), again.module, again.extra) == (str(err), err.module, err.extra)


@pytest.mark.parametrize(
    ("reader", "missing", "extra"),
    [
        ("Run.to_pandas", "pandas", "pandas"),
        ("Run.to_xarray", "xarray", "xarray"),
        ("Comparison.to_pandas", "pandas", "pandas"),
        ("Comparison.to_xarray", "xarray", "xarray"),
    ],
)
def test_the_readers_raise_missing_extra(monkeypatch, reader, missing, extra):
    from specdyn.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, missing, None)
    cls, method = reader.split(".")
    # the extra is checked before the store is touched: no store needed
    with pytest.raises(MissingExtraError) as info:
        getattr(getattr(specdyn.store, cls), method)(None, "metrics")
    assert (info.value.module, info.value.extra, info.value.what) == (missing, extra, reader)
    assert f"pip install 'specdyn[{extra}]'" in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "missing", "extra"),
    [
        ("parquet", "pyarrow", "pandas"),
        ("csv", "pyarrow", "pandas"),
        ("netcdf", "h5netcdf", "xarray"),
    ],
)
def test_the_cli_prints_a_missing_extra_as_one_line(
    tmp_path, monkeypatch, capsys, fmt, missing, extra
):
    monkeypatch.setitem(sys.modules, missing, None)
    code = main(["export", "no-such-run", "--format", fmt, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        f"specdyn: error: export to {'CSV' if fmt == 'csv' else fmt.replace('netcdf', 'netCDF')} "
        f"needs {missing}, which is not installed: pip install 'specdyn[{extra}]'"
    ]


OPTIONAL = re.compile(
    r"^\s*(?:import|from)\s+(pandas|xarray|pyarrow|h5netcdf|dask|distributed|weightwatcher)\b",
    re.M,
)


def test_every_optional_import_goes_through_require_extra():
    found = [
        str(path.relative_to(LIBRARY))
        for path in sorted(LIBRARY.rglob("*.py"))
        if OPTIONAL.search(path.read_text(encoding="utf-8"))
    ]
    assert found == []
