"""`specdyn demo grokking`: train, analyse and draw, in one call (what the CLI runs)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis import Progress, RunAnalysis, VectorOptions, analyze
from ..store import resolve_home
from .grokking import GROKKING_QUICK, GrokkingRun, train_grokking

__all__ = ["DemoResult", "grokking_demo"]


@dataclass
class DemoResult:
    """What `grokking_demo` did.

    training: the `GrokkingRun` (folder of checkpoints, curves, wall time, settings),
    or the earlier run's when its checkpoints were reused (`reused` True).
    analysis: the `RunAnalysis` of the checkpoints (store path, steps, timing).
    figure: the dynamics figure written. run_name: the store's run name.
    summary: read back from the store: ``train_fit_step`` (first logged step with
    training accuracy ≥ 0.99), ``val_jump_step`` (first with validation accuracy
    ≥ 0.9; None if never), ``final_train_acc``, ``final_val_acc``, ``rank_first`` and
    ``rank_last`` (mean normalised effective rank over the matrices at the first and
    last checkpoints), ``training_s`` (None when reused), ``analysis_s``.
    """

    training: GrokkingRun | None
    analysis: RunAnalysis
    figure: Path
    run_name: str
    reused: bool
    summary: dict[str, Any]


def grokking_demo(
    *,
    home: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    weight_decay: bool = True,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    on_train: Callable[[int, int, Mapping[str, float]], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> DemoResult:
    """Train the grokking setting, analyse its checkpoints and draw the dynamics figure.

    Args:
        home: the workspace (store ``<home>/grokking.h5``, or ``grokking-nowd.h5``
            for the control).
        out: where the checkpoints and the figure go (default: the workspace's
            ``demo/<run>/`` and ``figures/<run>/demo-dynamics.png``, a name no ``specdyn plot`` figure takes).
        weight_decay: False trains the control without weight decay.
        quick: the shortened setting (`GROKKING_QUICK`, ≈ 8 s of training).
        overrides: `train_grokking` options (modulus, train_fraction, steps, seed, …).
        on_train: training progress ``(step, steps, metrics)``.
        on_progress: analysis progress (`specdyn.analyze`'s).

    Returns:
        `DemoResult`. Training is deterministic: when the folder already holds the
        checkpoints of the same settings they are reused, not retrained.

    Raises:
        DemoError (a `SpecdynError`): an option out of range; the errors of `analyze`.
    """
    options: dict[str, Any] = dict(GROKKING_QUICK) if quick else {}
    options.update(overrides or {})
    if not weight_decay:
        options["weight_decay"] = 0.0
    name = "grokking" + ("-quick" if quick else "") + ("" if weight_decay else "-nowd")
    workspace = resolve_home(home)
    base = Path(out) if out is not None else None
    folder = (base / name) if base is not None else workspace / "demo" / name
    figure = (
        (base / f"{name}-dynamics.png")
        if base is not None
        else (workspace / "figures" / name / "demo-dynamics.png")
    )
    training, reused = None, _same_run(folder, options)
    if not reused:
        training = train_grokking(folder, overwrite=True, progress=on_train, **options)
    result = analyze(
        folder, home=home, name=name, vectors=VectorOptions(), overwrite=not reused,
        on_progress=on_progress,
    )  # fmt: skip
    from ..plots import plot_dynamics  # matplotlib only now

    fig = plot_dynamics(name, home=home, scores=True, title=_title(name, options))
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=130)
    summary = _summary(name, home)
    summary["training_s"] = None if training is None else round(training.wall_time_s, 1)
    summary["analysis_s"] = round(result.runs[0].seconds, 1)
    return DemoResult(training, result.runs[0], figure, name, reused, summary)


def _summary(name: str, home) -> dict[str, Any]:
    """The demo's headline numbers, from the store."""
    import numpy as np

    from ..store import open_run

    with open_run(name, home) as run:
        rank = run.metric("normalized_effective_rank")
        out: dict[str, Any] = {
            "rank_first": round(float(np.nanmean(rank[0])), 3),
            "rank_last": round(float(np.nanmean(rank[-1])), 3),
        }
        for key, metric, level in (
            ("train_fit_step", "train_acc", 0.99),
            ("val_jump_step", "val_acc", 0.9),
        ):
            steps, values = run.training(metric)
            hit = np.flatnonzero(values >= level)
            out[key] = int(steps[hit[0]]) if hit.size else None
            out[f"final_{metric}"] = round(float(values[-1]), 4)
    return out


def _same_run(folder: Path, options: Mapping[str, Any]) -> bool:
    """Whether `folder` holds a finished run of these settings (its config.json says so
    and every checkpoint of its schedule is there)."""
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    settings = saved.get("settings") if isinstance(saved, dict) else None
    if not isinstance(settings, dict):
        return False
    from .grokking import _check_options, checkpoint_schedule

    try:
        wanted = _check_options(**_defaults(options))
    except Exception:  # noqa: BLE001 - invalid options are reported by train_grokking
        return False
    comparable = {k: v for k, v in wanted.items() if k != "threads"}
    if any(json.dumps(settings.get(k)) != json.dumps(_plain(v)) for k, v in comparable.items()):
        return False
    schedule = checkpoint_schedule(wanted["steps"], wanted["checkpoints"])
    return all((folder / f"step_{s:06d}.pt").is_file() for s in schedule)


def _defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    """`train_grokking`'s keyword defaults, overridden by `options`."""
    import inspect

    params = inspect.signature(train_grokking).parameters
    keys = ("modulus", "train_fraction", "steps", "width", "heads", "mlp", "lr",
            "weight_decay", "betas", "seed", "checkpoints", "log_every", "threads")  # fmt: skip
    out = {k: params[k].default for k in keys}
    out.update({k: v for k, v in options.items() if k in out})
    return out


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists)."""
    return json.loads(json.dumps(value))


def _title(name: str, options: Mapping[str, Any]) -> str:
    """The figure title: the task and the weight decay."""
    s = _defaults(options)
    return (
        f"{name}: (a + b) mod {s['modulus']}, {round(100 * s['train_fraction'])}% of pairs "
        f"for training, AdamW weight decay {s['weight_decay']:g}"
    )
