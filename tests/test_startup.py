"""Start-up: `import specdyn`, the command line and the paths that only read a store or
draw never import torch or (before a figure) matplotlib (issue 19, item 4).

Each check runs in a fresh interpreter and reads `sys.modules` there, so nothing
imported by this test process can hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import specdyn

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mlp-wd"


def _modules_after(code: str) -> set[str]:
    """The top-level packages imported once `code` has run in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A workspace holding one analysed run, "mlp-wd"."""
    ws = tmp_path_factory.mktemp("startup")
    specdyn.analyze(FIXTURE, home=ws, steps="0,1000,4000")
    return ws


@pytest.mark.parametrize(
    "code",
    [
        "import specdyn",
        "import specdyn.cli",
        "import specdyn.store, specdyn.plots, specdyn.analysis, specdyn.pythia, specdyn.sources",
        "from specdyn import open_run, list_runs, export, verify, Run, Note, TensorInfo",
        "from specdyn.cli import app",
    ],
)
def test_imports_need_no_torch(code):
    loaded = _modules_after(code)
    assert "torch" not in loaded and "matplotlib" not in loaded, code


def test_lazy_names_are_the_modules_own():
    # every public name resolves, to the object its module defines
    from specdyn.analysis import _analyze
    from specdyn.store import open_run

    assert specdyn.analyze is _analyze.analyze and specdyn.open_run is open_run
    for package in (specdyn, specdyn.analysis, specdyn.sources, specdyn.pythia, specdyn.pairs):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
        assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        specdyn.analysis.nope  # noqa: B018


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["runs", "--home", "{home}"],
        ["info", "mlp-wd", "--home", "{home}", "--json"],
        ["verify", "mlp-wd", "--home", "{home}"],
        ["export", "mlp-wd", "--home", "{home}", "--format", "csv", "--out", "{home}/out"],
        ["plot", "rank", "mlp-wd", "--home", "{home}", "--out", "{home}/rank.png"],
    ],
    ids=["help", "runs", "info", "verify", "export", "plot"],
)
def test_commands_that_read_a_store_never_import_torch(home, argv):
    args = [a.format(home=home) for a in argv]
    code = (
        "import sys\nfrom specdyn.cli import main\n"
        f"sys.argv = ['specdyn']\ntry:\n    rc = main({args!r})\nexcept SystemExit as e:\n"
        "    rc = e.code\nassert rc in (0, None), rc"
    )
    loaded = _modules_after(code)
    assert "torch" not in loaded, argv


def test_the_lazy_names_are_read_from_the_type_checking_block():
    from specdyn.lazy import type_checking_imports

    source = (
        "from typing import TYPE_CHECKING\nfrom .kept import eager\n"
        "if TYPE_CHECKING:\n    from ._a import x, y as z\n    from ..b import w\n"
        "    import os\n"
    )
    assert type_checking_imports(source) == {"x": "._a", "z": "._a:y", "w": "..b"}
