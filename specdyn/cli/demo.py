"""`specdyn demo grokking`: train the paper's grokking setting, analyse it, draw it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import HomeOption, JsonOption, QuietOption
from ._output import Output

demo_app = typer.Typer(
    help="Self-contained demos: train a small network on CPU, analyse and plot it.",
    no_args_is_help=True,
)


@demo_app.command("grokking")
def grokking_command(
    no_weight_decay: Annotated[
        bool,
        typer.Option(
            "--no-weight-decay",
            help="The control: no weight decay (no grokking, little rank collapse).",
        ),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="A shortened setting (mod 31, 1500 steps; 10–20 s on a laptop CPU)."
        ),
    ] = False,
    modulus: Annotated[int | None, typer.Option(help="The prime p of (a + b) mod p.")] = None,
    train_fraction: Annotated[
        float | None, typer.Option(help="Share of the p² pairs used for training.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Full-batch AdamW steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the data split and weights.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the checkpoints and the figure (default: the workspace)."),
    ] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train a one-layer transformer on modular addition until it groks, analyse every
    checkpoint and draw its training curves over the rank of every matrix."""
    from ..demo import grokking_demo

    overrides = {
        k: v
        for k, v in (("modulus", modulus), ("train_fraction", train_fraction),
                     ("steps", steps), ("seed", seed))
        if v is not None
    }  # fmt: skip
    output = Output(json_mode=json_out, quiet=quiet)
    with output.demo_progress() as (on_train, on_progress):
        result = grokking_demo(
            home=home, out=out, weight_decay=not no_weight_decay, quick=quick,
            overrides=overrides, on_train=on_train, on_progress=on_progress,
        )  # fmt: skip
    output.notes([n for n in result.analysis.notes if n.kind != "training"])
    s = result.summary
    if output.json_mode:
        output.json(
            {
                "run": result.run_name,
                "store": result.analysis.store_path,
                "figure": str(result.figure),
                "checkpoints": str(result.analysis.source_root),
                "reused_checkpoints": result.reused,
                **s,
            }
        )
        return

    def at(step):
        return "never" if step is None else f"step {step}"

    output.fields(
        f"demo: {result.run_name}",
        [
            ("checkpoints", f"{len(result.analysis.steps_selected)} in {result.analysis.source_root}"
             + (" (reused: same settings)" if result.reused else "")),
            ("training", "reused" if s["training_s"] is None else f"{s['training_s']:.0f} s"),
            ("analysis", f"{s['analysis_s']:.0f} s"),
            ("train accuracy ≥ 0.99", at(s["train_fit_step"])),
            ("validation accuracy ≥ 0.9", at(s["val_jump_step"])),
            ("final accuracy train / val", f"{s['final_train_acc']:.3f} / {s['final_val_acc']:.3f}"),
            ("mean normalised rank", f"{s['rank_first']:.3f} → {s['rank_last']:.3f}"),
            ("store", result.analysis.store_path),
            ("figure", str(result.figure)),
        ],
    )  # fmt: skip
    if not quiet:
        output.line(
            f"next: specdyn plot dynamics {result.run_name} --log-x · "
            f"specdyn plot sv {result.run_name} --matrix mlp · specdyn info {result.run_name}"
        )
