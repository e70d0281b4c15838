"""`--json` failures print one JSON document {"error", "kind"} on stdout (issue 24, finding
7); the one-line error still goes to stderr and the exit code is unchanged."""

from __future__ import annotations

import json

import torch

from specdyn.cli import main


def _failure(capsys, argv: list[str]) -> tuple[int, dict, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_analyze_of_a_missing_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, doc, err = _failure(capsys, ["analyze", str(missing), "--json", "--home", str(tmp_path)])
    assert code == 1 and set(doc) == {"error", "kind"}
    assert doc["kind"] == "DiscoveryError"
    assert doc["error"].startswith(f"{missing}: does not exist")
    assert err == f"specdyn: error: {doc['error']}\n"  # the same one line, once


def test_info_of_an_unknown_run(tmp_path, capsys):
    code, doc, err = _failure(capsys, ["info", "no-such-run", "--json", "--home", str(tmp_path)])
    assert code == 1 and doc["kind"] == "RunNotFoundError"
    assert "no run named 'no-such-run'" in doc["error"] and doc["error"] in err


def test_a_usage_error_with_json(tmp_path, capsys):
    code, doc, err = _failure(capsys, ["info", "--json", "--no-such-option"])
    assert code == 2 and doc == {
        "error": "No such option: --no-such-option",
        "kind": "NoSuchOption",
    }
    assert "No such option" in err


def test_an_unreadable_checkpoint_names_the_file(tmp_path, capsys):
    bad = tmp_path / "step_1.pt"
    torch.save(
        {"w": {"a": {"x.weight": torch.ones(2, 2)}, "b": {"x.weight": torch.zeros(2, 2)}}}, bad
    )
    code, doc, _err = _failure(capsys, ["analyze", str(bad), "--json", "--home", str(tmp_path)])
    assert code != 0 and str(bad) in doc["error"] and "not merged" in doc["error"]


def test_without_json_stdout_stays_empty_and_success_prints_one_document(tmp_path, capsys):
    assert main(["info", "no-such-run", "--home", str(tmp_path)]) == 1
    assert capsys.readouterr().out == ""
    assert main(["runs", "--json", "--home", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == []
