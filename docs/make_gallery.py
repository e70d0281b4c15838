"""Draw the figures of docs/gallery.md from the committed fixtures.

    python docs/make_gallery.py                     # PNGs into docs/gallery/
    python docs/make_gallery.py --out /tmp/gallery  # somewhere else
    python docs/make_gallery.py --home /tmp/ws      # keep the stores (a re-run reuses them)

Analyses the five fixture trajectories (fixtures/README.md) into a workspace (a
temporary folder unless --home is given) with singular vectors and whole k×k
alignment/agreement matrices, as ``specdyn analyze fixtures --full-matrices``
does, compares mlp-wd with mlp-nowd and the LMC branches (``specdyn compare``), then
draws one PNG per figure of the gallery: every figure kind of ``specdyn plot`` and the
weight-decay comparison (mlp-wd beside mlp-nowd, one colour scale). The single-kind figures are made by running the very
``specdyn plot`` command lines that docs/gallery.md shows (in this process,
through `specdyn.cli.main`), and the script warns about any command the page
does not show. Takes about 20 s on 2 CPU cores (10-20 s analysing, 4 s drawing);
the PNGs (100 dpi) weigh under 1 MB together, byte-identical from run to run on one machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
GALLERY_PAGE = ROOT / "docs" / "gallery.md"
DPI = 100

# (file name, `specdyn plot` arguments after "plot"; --home, --out and --dpi are added).
COMMANDS: list[tuple[str, list[str]]] = [
    ("rank-neox.png", ["rank", "neox-trainer", "--log-x"]),
    ("metric-stable-rank-neox.png", ["metric", "stable_rank", "neox-trainer", "--log-x"]),
    (
        "sv-neox.png",
        ["sv", "neox-trainer", "--matrix", "layers.0.mlp.dense_h_to_4h", "--top", "20", "--log-x"],
    ),
    ("esd-mlp-wd.png", ["esd", "mlp-wd", "--matrix", "layers.1", "--steps", "0,10,50,500,4000"]),
    ("metric-alpha-mlp-wd.png", ["metric", "alpha", "mlp-wd", "--log-x"]),
    ("alignment-mlp-wd.png", ["alignment", "mlp-wd", "--pair", "layers.1~", "--log-x"]),
    (
        "agreement-neox.png",
        ["agreement", "neox-trainer", "--matrix", "layers.0.mlp.dense_h_to_4h", "--log-x"],
    ),
    (
        "alignment-matrix-mlp-wd.png",
        ["alignment-matrix", "mlp-wd", "--pair", "layers.1~", "--steps", "0,100,1000,4000"],
    ),
    ("rank-lstm.png", ["rank", "lstm", "--log-x"]),
    ("rank-cnn.png", ["rank", "cnn-lightning", "--log-x"]),
    ("dynamics-mlp-wd.png", ["dynamics", "mlp-wd", "--scores", "--log-x"]),
    ("side-by-side-weight-decay.png", ["side-by-side", "weight-decay", "--log-x"]),
    ("split-lmc.png", ["split", "lmc"]),
    (
        "branch-agreement-lmc.png",
        ["branch-agreement", "lmc", "--matrix", "layers.1", "--top", "40"],
    ),
]

# The comparisons the last figures draw (`specdyn compare`, run before the plots).
COMPARISONS = [
    ("weight-decay", ["mlp-wd", "mlp-nowd"], "runs"),
    ("lmc", [f"lmc-trunk-{t}-branch-split{s:04d}-order{o}" for t in "ab" for s in (0, 50, 500)
             for o in (1, 2)], "split"),
]  # fmt: skip


def command_line(args: list[str], out: str) -> str:
    """The shell command docs/gallery.md shows for `args` (the workspace from SPECDYN_HOME)."""
    return shlex.join(["specdyn", "plot", *args, "--dpi", str(DPI), "--out", out])


def analyse(home: Path) -> None:
    """Every fixture run into `home`, with vectors and whole k×k matrices (resumes)."""
    import specdyn

    started = time.perf_counter()
    result = specdyn.analyze(
        FIXTURES,
        home=home,
        vectors=specdyn.VectorOptions(full_matrices=True),
        compute=specdyn.ComputeOptions(device="cpu"),
    )
    names = ", ".join(r.name for r in result.runs)
    print(f"analysed {names} into {home} in {time.perf_counter() - started:.1f} s")


def compare_runs(home: Path) -> None:
    """The comparison stores the side-by-side, split and branch-agreement figures read."""
    import specdyn

    for name, runs, by in COMPARISONS:
        specdyn.compare(runs, by=by, home=home, name=name)


def draw_commands(home: Path, out: Path) -> list[str]:
    """Run each `specdyn plot` command of COMMANDS; the command lines shown in the page."""
    from specdyn.cli import main

    shown = []
    for name, args in COMMANDS:
        code = main(
            ["plot", *args, "--home", str(home), "--dpi", str(DPI), "--out", str(out / name)]
        )
        if code != 0:
            raise SystemExit(f"specdyn plot {' '.join(args)} failed (exit code {code})")
        shown.append(command_line(args, f"docs/gallery/{name}"))
    return shown


def weight_decay_figure(home: Path, path: Path) -> None:
    """mlp-wd beside mlp-nowd: rank heatmaps on one colour scale (every cell's value
    written in it), and the singular values of the hidden layer on one y range."""
    from matplotlib.collections import QuadMesh
    from matplotlib.figure import Figure

    import specdyn

    runs = [("mlp-wd", "AdamW weight_decay 0.5"), ("mlp-nowd", "AdamW weight_decay 0")]
    fig = Figure(figsize=(12.0, 8.0), layout="constrained")
    (rank_wd, rank_nowd), (sv_wd, sv_nowd) = fig.subplots(2, 2)
    meshes, finals = [], {}
    for (run, what), top_ax, bottom_ax in zip(
        runs, (rank_wd, rank_nowd), (sv_wd, sv_nowd), strict=True
    ):
        with specdyn.open_run(run, home=home) as r:
            specdyn.plot_rank(r, ax=top_ax, log_x=True, title=f"{run} ({what})")
            specdyn.plot_sv(
                r, "layers.1", ax=bottom_ax, log_x=True, title=f"{run}: layers.1 (96×96), all σᵢ"
            )
            bottom_ax.title.set_fontsize(10)  # as the heatmaps' titles
            values = r.metric("normalized_effective_rank").T  # [matrices, steps], as drawn
            finals[run] = values[:, -1]
            last = int(r.steps[-1])
            mesh = next(c for c in top_ax.collections if isinstance(c, QuadMesh))
            meshes.append(mesh)
            centres, narrow = _cell_centres(top_ax, mesh)
            for row, column in np.ndindex(values.shape):
                v = values[row, column]
                top_ax.text(
                    centres[column],
                    row,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    rotation=90 if narrow[column] else 0,  # upright where a cell is too narrow
                    color="white" if v < 0.6 else "black",
                )
    # one colour scale for both heatmaps (plot_rank has no vmin/vmax of its own)
    low = min(float(np.nanmin(m.get_array())) for m in meshes)
    high = max(float(np.nanmax(m.get_array())) for m in meshes)
    for mesh in meshes:
        mesh.set_clim(low, high)
    top = max(sv_wd.get_ylim()[1], sv_nowd.get_ylim()[1])
    for ax in (sv_wd, sv_nowd):
        ax.set_ylim(0.0, top)
    wd, nowd = finals["mlp-wd"], finals["mlp-nowd"]
    fig.suptitle(
        f"Weight decay lowers the rank of the hidden layers: at step {last} exp(H)/R of "
        f"layers.1 / layers.2 is {wd[1]:.2f} / {wd[2]:.2f} with weight decay, "
        f"{nowd[1]:.2f} / {nowd[2]:.2f} without",
        fontsize=11,
    )
    fig.savefig(path, dpi=DPI)


def _cell_centres(ax, mesh) -> tuple[np.ndarray, np.ndarray]:
    """The middle of each column of a heatmap in the axis' own scale (the first and last
    columns are half-width: their middle is not their step), and which columns are too
    narrow for a value written across (under 6 % of the axis)."""
    edges = mesh.get_coordinates()[0, :, 0]
    transform = ax.xaxis.get_transform()
    t = transform.transform(edges)
    narrow = np.diff(t) < 0.06 * (t[-1] - t[0])
    return transform.inverted().transform((t[1:] + t[:-1]) / 2), narrow


def check_page(shown: list[str]) -> None:
    """Warn about commands that docs/gallery.md does not show verbatim."""
    page = GALLERY_PAGE.read_text(encoding="utf-8") if GALLERY_PAGE.exists() else ""
    for line in shown:
        if line not in page:
            print(f"warning: docs/gallery.md does not show: {line}", file=sys.stderr)


def main() -> None:
    """Analyse the fixtures and draw the gallery."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery", help="PNG folder")
    parser.add_argument("--home", type=Path, help="workspace to keep (default: a temporary one)")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="specdyn-gallery-") as scratch:
        home = options.home or Path(scratch)
        analyse(home)
        compare_runs(home)
        started = time.perf_counter()
        shown = draw_commands(home, options.out)
        weight_decay_figure(home, options.out / "weight-decay.png")
        print(
            f"drew {len(shown) + 1} figures into {options.out} in "
            f"{time.perf_counter() - started:.1f} s"
        )
    for line in shown:
        print(line)
    check_page(shown)


if __name__ == "__main__":
    main()
