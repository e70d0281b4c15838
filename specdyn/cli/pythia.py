"""`specdyn pythia --model SIZE`: the Pythia revisions, streamed from the hub into a store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ._options import (
    DeviceOption,
    ExactOption,
    FullMatricesOption,
    HomeOption,
    JsonOption,
    MaxMemoryOption,
    PrecisionOption,
    QuietOption,
    ReferenceOption,
    SaveVectorsOption,
    ScoreTopOption,
    ValuesOnlyOption,
    VectorsOption,
    compute_options,
    vector_options_from,
)
from ._output import Output

if TYPE_CHECKING:  # annotations only: the command imports the library when it runs
    from ..pythia import PythiaPlan, PythiaResult


def pythia_command(
    model: Annotated[
        str,
        typer.Option(
            help="Pythia size (70m … 12b, optionally -deduped) or a GPT-NeoX repo id "
            "with step branches."
        ),
    ],
    steps: Annotated[
        str | None,
        typer.Option(
            help="Revisions by step: 0,1000,5000 | start:stop | start:stop:stride | lin:N | log:N."
        ),
    ] = None,
    home: HomeOption = None,
    name: Annotated[str | None, typer.Option(help="Store name (default: pythia-<size>).")] = None,
    duplicates: Annotated[
        str,
        typer.Option(help="Byte-identical revisions: skip (analyse once) or analyze (all)."),
    ] = "skip",
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the downloaded files in the hub cache.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print what would be fetched, sizes and disk; download nothing."
        ),
    ] = False,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "float64",
    exact: ExactOption = False,
    max_memory: MaxMemoryOption = None,
    values_only: ValuesOnlyOption = False,
    vectors: VectorsOption = None,
    reference: ReferenceOption = None,
    full_matrices: FullMatricesOption = None,
    save_vectors: SaveVectorsOption = None,
    score_top: ScoreTopOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Recompute a store made with other options.")
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Analyse on a Dask cluster, one task per revision, each downloading its "
            "revision on its worker and deleting it (same store): local:N, tcp://HOST:PORT "
            "or a scheduler JSON file. Needs pip install 'specdyn\\[dist]'; docs/distributed.md.",
        ),
    ] = None,
    max_inflight: Annotated[
        int | None,
        typer.Option(
            "--max-inflight",
            help="With --scheduler: the most revisions computed and not yet written at once "
            "(default: 2 per worker, fewer when their estimated results would not fit in a "
            "quarter of this machine's available memory).",
        ),
    ] = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Analyse a Pythia model's training revisions, one at a time, from the hub."""
    if duplicates not in ("skip", "analyze"):
        raise typer.BadParameter("choose skip or analyze", param_hint="--duplicates")
    from ..analysis import cluster_spec  # torch: imported when a command computes
    from ..pythia import plan_pythia, pythia

    out = Output(json_mode=json_out, quiet=quiet)
    on_workers = cluster_spec(scheduler, max_inflight) is not None  # before any request
    planned = {"steps": steps, "home": home, "name": name, "duplicates": duplicates}
    if dry_run:
        _render_plan(plan_pythia(model, **planned, on_workers=on_workers), out)
        return
    compute = compute_options(device, precision, exact, max_memory)
    options = vector_options_from(
        values_only, vectors, reference, full_matrices, save_vectors, score_top, None, None
    )
    plan = plan_pythia(model, **planned, on_workers=on_workers)
    _quiet_hub_bars()
    with out.sweep_progress(plan.bytes_to_fetch) as (on_progress, on_fetch):
        result = pythia(
            model,
            steps=steps,
            home=home,
            name=name,
            duplicates=duplicates,
            keep=keep,
            compute=compute,
            vectors=options,
            overwrite=overwrite,
            on_progress=on_progress,
            on_fetch=on_fetch,
            scheduler=scheduler,
            max_inflight=max_inflight,
        )
    _render_result(result, out)


def _render_plan(plan: PythiaPlan, out: Output) -> None:
    """The dry run: one row per revision, then totals."""
    if out.json_mode:
        out.json(plan.to_dict())
        out.notes(plan.notes)
        return
    out.table(
        f"{plan.repo}: {len(plan.revisions)} revisions"
        + (" (offline: cache only)" if plan.offline else ""),
        ("branch", "layout", "size GB", "to fetch GB", "action", "flag"),
        (
            (r.branch, r.layout, f"{r.size / 1e9:.3f}", f"{r.to_fetch / 1e9:.3f}", r.action, r.flag)
            for r in plan.revisions
        ),
    )
    out.fields(
        "sweep",
        [
            ("store", plan.name),
            ("to analyse", sum(r.action == "analyse" for r in plan.revisions)),
            ("already in the store", sum(r.action == "done" for r in plan.revisions)),
            ("duplicates skipped", sum(r.action == "skip-duplicate" for r in plan.revisions)),
            ("download", f"{plan.bytes_to_fetch / 1e9:.2f} GB"),
            ("peak disk", f"{plan.peak_disk / 1e9:.2f} GB " + _peak_disk_scope(plan)),
            ("missing branches", ", ".join(map(str, plan.missing)) or "none"),
        ],
    )
    out.notes(plan.notes)


def _peak_disk_scope(plan: PythiaPlan) -> str:
    """What the dry run's peak disk is the peak of."""
    if plan.on_workers:
        return "per worker thread (one revision at a time, in the worker's local directory)"
    return "(two revisions at most)"


def _render_result(result: PythiaResult, out: Output) -> None:
    """The sweep's summary (or JSON), then its notes."""
    if out.json_mode:
        out.json(result.to_dict())
    else:
        a = result.analysis
        flagged = [r for r in result.plan.revisions if r.flag]
        out.fields(
            f"pythia {result.plan.repo}",
            [
                ("store", a.store_path if a else "nothing to do: every revision is in the store"),
                ("revisions analysed now", len(a.steps_computed) if a else 0),
                ("already in the store", len(a.steps_already_done) if a else 0),
                ("failed", ", ".join(map(str, a.steps_failed)) if a and a.steps_failed else "none"),
                ("flagged", "; ".join(f"step {r.step}: {r.flag}" for r in flagged[:8]) or "none"),
                ("downloaded", f"{result.fetched_bytes / 1e9:.2f} GB"),
                ("time", f"{a.seconds:.1f} s" if a else "-"),
            ],
        )
    out.notes(result.notes)
    if result.analysis is not None:
        out.notes(result.analysis.notes)


def _quiet_hub_bars() -> None:
    """huggingface_hub's own tqdm bars would break the rich display: this command shows
    the download itself."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
