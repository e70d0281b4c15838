"""Errors in one place: structured fields, and option names worded for whoever called."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import specdyn
from specdyn import errors
from specdyn.cli import main
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
    import specdyn.pairs
    import specdyn.pythia

    assert specdyn.pairs.PairsFileError is errors.PairsFileError
    assert specdyn.pythia.HubError is errors.HubError
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, SpecdynError) and value.__module__ == "specdyn.errors"


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mlp-wd"


def test_the_cli_words_a_library_error_in_flags(tmp_path, capsys):
    code = main(["analyze", str(FIXTURE), "--home", str(tmp_path / "h"), "--steps", "3:x"])
    err = capsys.readouterr().err
    assert code != 0 and "--steps '3:x'" in err and "Traceback" not in err
