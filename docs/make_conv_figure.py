"""Draw docs/images/conv-alignment.png: conv alignment on the cnn-lightning fixture.

    python docs/make_conv_figure.py                  # writes docs/images/conv-alignment.png
    python docs/make_conv_figure.py --out /tmp/x.png

Analyses fixtures/cnn-lightning three times into a temporary workspace (about 2 s): with
the default definition (the paper's: right singular vectors of the flattened kernel cut
to the centre tap), with ``basis = "slice"`` (the SVD of the centre tap's slice alone)
and with ``tap = "all"`` (every kernel tap kept), then draws three panels:

1. a(t) of both conv → conv pairs under the two bases;
2. the diagonal A_ii of conv2 → conv3 at the last step under the two bases;
3. a(t) of conv2 → conv3 per kernel tap, averaged over the steps, as the 3×3 kernel.

Uses matplotlib's object API (no pyplot) and writes the PNG at 100 dpi without a
timestamp, so a re-run on one machine gives the same bytes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CNN = ROOT / "fixtures" / "cnn-lightning"
OUT = ROOT / "docs" / "images" / "conv-alignment.png"
PAIRS = ("conv1.weight~conv2.weight", "conv2.weight~conv3.weight")
FOCUS = PAIRS[1]
DEFINITIONS = {
    "kernel": "",  # the default: no pairs file
    "slice": '[conv]\nbasis = "slice"\n',
    "all": '[conv]\ntap = "all"\n',
}


def analyse(home: Path) -> dict[str, Path]:
    """One store per definition: name → store path."""
    import specdyn

    stores = {}
    for name, text in DEFINITIONS.items():
        pairs_file = None
        if text:
            pairs_file = home / f"{name}.toml"
            pairs_file.write_text(text)
        options = specdyn.VectorOptions(pairs_file=str(pairs_file) if pairs_file else None)
        result = specdyn.analyze(CNN, home=home, name=name, vectors=options)
        stores[name] = Path(result.runs[0].store_path)
    return stores


def draw(stores: dict[str, Path], out: Path) -> None:
    """The three panels from the three stores."""
    from matplotlib.figure import Figure

    import specdyn

    with (
        specdyn.open_run(stores["kernel"]) as kernel,
        specdyn.open_run(stores["slice"]) as sliced,
        specdyn.open_run(stores["all"]) as every,
    ):
        steps = kernel.steps
        fig = Figure(figsize=(13.0, 4.0), layout="constrained")
        ax_t, ax_d, ax_k = fig.subplots(1, 3, width_ratios=(1.3, 1.1, 0.8))
        x = np.maximum(steps, 1)
        for pair, colour in zip(PAIRS, ("tab:blue", "tab:orange"), strict=True):
            label = pair.replace(".weight", "").replace("~", " → ")
            ax_t.plot(x, kernel.alignment_score(pair), color=colour, marker="o", ms=3,
                      label=f"{label}, kernel (default)")  # fmt: skip
            ax_t.plot(x, sliced.alignment_score(pair), color=colour, ls="--", marker="s",
                      ms=3, label=f"{label}, slice")  # fmt: skip
        ax_t.set_xscale("log")
        ax_t.set_xlabel("training step (0 drawn at 1)")
        ax_t.set_ylabel("a(t): mean of the first 10 A_ii")
        ax_t.set_title("alignment score, two bases")
        ax_t.legend(fontsize=8)

        last = len(steps) - 1
        i = np.arange(1, kernel.alignment(FOCUS).shape[1] + 1)
        ax_d.plot(
            i, kernel.alignment(FOCUS)[last], marker="o", label="kernel: v of W3 flattened, cut"
        )
        ax_d.plot(i, sliced.alignment(FOCUS)[last], marker="s", ls="--",
                  label="slice: v of W3[:, :, 1, 1]")  # fmt: skip
        ax_d.set_xticks(i[::2])
        ax_d.set_xlabel("i (singular vector index)")
        ax_d.set_ylabel("A_ii")
        ax_d.set_title(f"conv2 → conv3 diagonal, step {int(steps[last])}")
        ax_d.legend(fontsize=8)

        heads = every.alignment_heads(FOCUS)  # [T, 9 taps (row-major), k]
        per_tap = heads[:, :, :10].mean(axis=2).mean(axis=0).reshape(3, 3)
        image = ax_k.imshow(per_tap, cmap="viridis")
        for (r, c), value in np.ndenumerate(per_tap):
            ax_k.text(c, r, f"{value:.3f}", ha="center", va="center", color="w", fontsize=9)
        ax_k.set_xticks(range(3))
        ax_k.set_yticks(range(3))
        ax_k.set_xlabel("kw index")
        ax_k.set_ylabel("kh index")
        ax_k.set_title('conv2 → conv3 per tap (tap = "all")\na(t) averaged over steps')
        fig.colorbar(image, ax=ax_k, shrink=0.8)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100, metadata={"Software": None})


def main() -> None:
    """Analyse into a temporary workspace and draw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        draw(analyse(Path(home)), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
