"""Reading a run: `Run`, one store opened read-only, and `open_run`.

with open_run("mlp-wd") as run:
    run.values.steps                              # int64 [T_done]
    run.values.sigma("fc1.weight")                # float64 [T_done, R]
    run.values.metric("normalized_effective_rank")  # float64 [T_done, M]
    run.alignment.score()                         # float64 [T_done, P]
    run.agreement("fc1")                          # float64 [T_done, k]
    run.training("loss")                          # (steps, values)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import _layout as layout
from ._records import CheckpointProblem, read_problems, read_step_records
from ._sections import (
    OpenStore,
    RunAgreement,
    RunAlignment,
    RunTraining,
    RunValues,
    RunVectors,
)
from ._workspace import resolve_run

__all__ = ["Run", "open_run"]


class _Alias:
    """A flat member of `Run` from before its sections, kept for one release: it reads
    the same member of a section (``run.sigma`` is ``run.values.sigma``)."""

    def __init__(self, section: str, member: str) -> None:
        self.section = section
        self.member = member
        self.__doc__ = f"Alias of ``run.{section}.{member}``, kept for one release."

    def __get__(self, run: Run | None, owner: type | None = None) -> Any:
        if run is None:
            return self
        return getattr(getattr(run, self.section), self.member)


class Run:
    """A store opened for reading (read-only, no HDF5 file lock; a context manager).

    Its numbers are grouped in sections, each a small object with its own readers:

    - `values` (`RunValues`): steps, all_steps, matrices, metric_names, find_matrix,
      sigma, metric, matrix_info;
    - `alignment` (`RunAlignment`): pairs, skipped_pairs, find_pair, steps, diagonal
      (also ``run.alignment(pair)``), heads, matrix, score;
    - `agreement` (`RunAgreement`): reference, steps, diagonal (also
      ``run.agreement(matrix)``), matrix, score;
    - `vectors` (`RunVectors`): config, steps, top_k (also ``run.vectors(matrix, step)``);
    - `training` (`RunTraining`): log, names, series (also ``run.training(name)``).

    The run itself holds what describes the store: `path`, `name`, `step_unit`,
    `schema_version`, `options`, `provenance`, `skipped`, `aliases`, `problems`, `step_sources`,
    `notes`, `step_flags`, `info`. The flat names of earlier releases (``run.steps``,
    ``run.sigma``, ``run.alignment_score``, ``run.vectors_config``, ...) are aliases of
    the section members, kept for one release.

    Only steps whose done flag is set are visible (a store being written, or
    interrupted, shows its finished steps). The done flags are read once, when the
    run is opened.

    Attributes:
        path: the store file; name: the run name; step_unit: ``"step"`` or
        ``"epoch"``; schema_version: the store's schema version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._store = OpenStore(self.path)
        self.name = self._store.name
        self.step_unit = self._store.step_unit
        self.schema_version = self._store.schema_version
        self.values = RunValues(self._store)
        self.alignment = RunAlignment(self._store)
        self.agreement = RunAgreement(self._store, self.values)
        self.vectors = RunVectors(self._store, self.values)
        self.training = RunTraining(self._store)

    # the flat members of earlier releases
    steps = _Alias("values", "steps")
    all_steps = _Alias("values", "all_steps")
    matrices = _Alias("values", "matrices")
    metric_names = _Alias("values", "metric_names")
    find_matrix = _Alias("values", "find_matrix")
    sigma = _Alias("values", "sigma")
    metric = _Alias("values", "metric")
    matrix_info = _Alias("values", "matrix_info")
    pairs = _Alias("alignment", "pairs")
    skipped_pairs = _Alias("alignment", "skipped_pairs")
    find_pair = _Alias("alignment", "find_pair")
    alignment_heads = _Alias("alignment", "heads")
    alignment_matrix = _Alias("alignment", "matrix")
    alignment_score = _Alias("alignment", "score")
    reference = _Alias("agreement", "reference")
    agreement_matrix = _Alias("agreement", "matrix")
    agreement_score = _Alias("agreement", "score")
    vectors_config = _Alias("vectors", "config")
    training_log = _Alias("training", "log")
    training_names = _Alias("training", "names")

    def section_steps(self, section: str) -> np.ndarray:
        """Steps whose `section` ("alignment", "agreement" or "vectors") is done: int64
        (``run.alignment.steps``, ``run.agreement.steps``, ``run.vectors.steps``)."""
        return self._store.section_steps(section)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(parameter, reason) of every parameter that was not analysed."""
        f = self._store.file
        return layout.read_string_pairs(f, layout.SKIPPED_PARAM, layout.SKIPPED_REASON)

    @property
    def aliases(self) -> dict[str, str]:
        """Tied-weight alias → the parameter analysed in its place."""
        f = self._store.file
        return dict(layout.read_string_pairs(f, layout.ALIASES_ALIAS, layout.ALIASES_TARGET))

    @property
    def problems(self) -> list[CheckpointProblem]:
        """The run's checkpoints that were found but not analysed (unreadable, unsafe, no
        step), as the latest analysis saw them; [] when every one was analysed."""
        return read_problems(self._store.file)

    @property
    def step_sources(self) -> list[dict[str, Any]]:
        """One dict per known step (done or not): step, epoch, source, format, size,
        mtime, sha256, origin (where the step number came from, "" when not recorded),
        done, invocation (index into `provenance`, -1 if not done)."""
        f = self._store.file
        done = set(self._store.done_rows.tolist())
        invocation = f[layout.STEPS_INVOCATION][()]
        return [
            {
                "step": r.step,
                "epoch": r.epoch,
                "source": r.source,
                "format": r.format,
                "size": r.size,
                "mtime": r.mtime,
                "sha256": r.sha256,
                "origin": r.origin,
                "done": i in done,
                "invocation": int(invocation[i]) if i in done else layout.INVOCATION_NONE,
            }
            for i, r in enumerate(read_step_records(f))
        ]

    @property
    def notes(self) -> dict[int, list[str]]:
        """Notes recorded while analysing each done step (steps without notes left out)."""
        data = self._store.file[layout.STEPS_NOTES][()]
        out = {}
        for i in self._store.done_rows:
            raw = data[i]
            if raw:
                text = raw.decode("utf-8", "replace")
                try:
                    items = json.loads(text)
                except (json.JSONDecodeError, RecursionError):
                    # damaged on disk: shown as such, never an internal error
                    items = [f"(notes unreadable, damaged in the store: {text[:80]!r})"]
                if not isinstance(items, list):
                    items = [f"(notes unreadable, not a list: {text[:80]!r})"]
                if items:
                    out[int(self._store.all_steps[i])] = [str(n) for n in items]
        return out

    @property
    def step_flags(self) -> dict[int, str]:
        """Flagged steps (done or not) → their flag ("duplicate of …", "failed: …")."""
        f = self._store.file
        if layout.STEPS_FLAG not in f:
            return {}
        flags = layout.read_strings(f[layout.STEPS_FLAG])
        steps = self._store.all_steps
        return {int(s): flag for s, flag in zip(steps, flags, strict=True) if flag}

    @property
    def provenance(self) -> list[dict[str, Any]]:
        """One record per invocation that wrote this store, oldest first."""
        f = self._store.file
        used = np.asarray(f[layout.PROVENANCE_USED][()], dtype=bool)
        records = f[layout.PROVENANCE_RECORD][()]
        out = []
        for i in np.flatnonzero(used):
            try:
                out.append(json.loads(records[i].decode("utf-8", "replace")))
            except json.JSONDecodeError:
                out.append({"unreadable": records[i][:200].decode("utf-8", "replace")})
        return out

    @property
    def options(self) -> dict[str, Any]:
        """The options that determine the stored numbers (precision, exact, include, ...)."""
        return json.loads(layout.attr_str(self._store.file, "options", "{}"))

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable summary of the store.

        Keys: name, path, source_root, step_unit, created, schema_version,
        steps_done, steps_total, first_step, last_step (of done steps; None if
        none), step_origins (where the step numbers came from → how many steps, over
        every known step: "trainer_state.json", "optimizer.bin state step", "name", …;
        "not recorded" in stores from before origins were kept), matrices (count), metrics, skipped (reason → count), aliases
        (count), methods (method → matrix-steps computed with it), options,
        size_bytes, notes (count), provenance (records), vectors (the settings,
        None for values only), pairs (count), alignment_steps and
        agreement_steps (counts), vector_steps (the steps whose vectors are
        kept), training_metrics (names), system_metrics (those of kind "system":
        runtime, throughput, FLOPs, memory), problems (the checkpoints not
        analysed: source, kind, message).
        """
        store = self._store
        steps = self.values.steps
        has_vectors = store.vector_layout is not None
        try:
            size = self.path.stat().st_size
        except OSError:
            size = None
        return {
            "name": self.name,
            "path": str(self.path),
            "source_root": layout.attr_str(store.file, "source_root"),
            "step_unit": self.step_unit,
            "created": layout.attr_str(store.file, "created"),
            "schema_version": self.schema_version,
            "steps_done": int(steps.size),
            "steps_total": int(store.all_steps.size),
            "first_step": int(steps[0]) if steps.size else None,
            "last_step": int(steps[-1]) if steps.size else None,
            "step_origins": dict(
                Counter(r.origin or "not recorded" for r in read_step_records(store.file))
            ),
            "matrices": len(store.matrices),
            "metrics": self.values.metric_names,
            "skipped": dict(Counter(reason for _, reason in self.skipped)),
            "aliases": len(self.aliases),
            "methods": dict(store.methods_of(None)),
            "options": self.options,
            "size_bytes": size,
            "notes": sum(len(v) for v in self.notes.values()),
            "provenance": self.provenance,
            "vectors": self.vectors.config,
            "pairs": len(store.pair_column),
            "alignment_steps": int(self.alignment.steps.size) if has_vectors else 0,
            "agreement_steps": int(self.agreement.steps.size) if has_vectors else 0,
            "vector_steps": self.vectors.steps.tolist() if has_vectors else [],
            "training_metrics": self.training.names,
            "system_metrics": sorted(n for n, k in self.training.kinds.items() if k == "system"),
            "problems": [asdict(p) for p in self.problems],
        }

    def to_pandas(self, section: str = "metrics") -> Any:
        """One section as a tidy pandas DataFrame: one row per value, done rows only.

        Args:
            section: ``"metrics"`` (columns run, step, epoch, matrix, kind, metric,
                value), ``"sigma"`` (run, matrix, step, i, sigma), ``"alignment"`` (run,
                pair, step, i, value: the diagonal A_ii), ``"agreement"`` (run, matrix,
                step, i, value: S_ii) or ``"training"`` (run, step, metric, value).

        Returns:
            A DataFrame: step and epoch int64 (epoch -1 when unknown), i int32 (0-based,
            descending σ), values float64; run, matrix, kind, metric and pair
            categorical of str, matrices and pairs in forward order. Steps not done
            (and, for alignment and agreement, steps whose section is not done) have no
            row; the training table has a row per metric and step where it was logged.

        Raises:
            MissingExtraError: pandas is not installed (``pip install 'specdyn[pandas]'``).
            StoreError: unknown section, or one this run lacks (a values-only store has
                no alignment or agreement).
        """
        from ._tables import to_pandas

        return to_pandas(self, section)

    def to_xarray(self, section: str = "metrics") -> Any:
        """One section as an `xarray.Dataset` with named dimensions and coordinates.

        Args:
            section: ``"metrics"``: one variable per metric, dims (step, matrix), coords
                epoch (step), kind and rank (matrix); ``"sigma"``: sigma (matrix, step,
                sv), NaN beyond each matrix's rank (coord rank); ``"alignment"``:
                diagonal (pair, step, k) and score (step, pair), coords first, second,
                length (the pair's diagonal length k_p; NaN beyond it); ``"agreement"``:
                diagonal (matrix, step, k) and score (step, matrix), attribute reference;
                ``"training"``: value (metric, step), NaN where a metric was not logged.

        Returns:
            The Dataset (float64 values, int64 step coordinate of done steps only;
            alignment and agreement of the steps whose section is done). The whole
            section is read into memory (use `specdyn.export` for large ones).

        Raises:
            MissingExtraError: xarray is not installed (``pip install 'specdyn[xarray]'``).
            StoreError: unknown section, or one this run lacks.
        """
        from ._tables import to_xarray

        return to_xarray(self, section)

    def to_datatree(self) -> Any:
        """Every section this run has (metrics, sigma, and alignment, agreement, training
        where present) as the children of one `xarray.DataTree` named after the run, each
        the Dataset `to_xarray` gives.

        ``xarray.open_datatree`` cannot open the store file itself: group-local datasets
        (``/steps/step``, ``/vectors/step``) and the ``/alignment/matrix`` group share
        names with the root's ``step`` and ``matrix`` coordinates, which a DataTree's
        children inherit (docs/store.md, "Opening with xarray").

        Raises:
            MissingExtraError: xarray is not installed (``pip install 'specdyn[xarray]'``).
        """
        from ._tables import to_datatree

        return to_datatree(self)

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._store.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        store = self._store
        return (
            f"Run({self.name!r}, {len(store.done_rows)}/{len(store.all_steps)} steps, "
            f"{len(store.matrices)} matrices, {str(self.path)!r})"
        )


def open_run(
    name_or_path: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Run:
    """Open a run's store for reading.

    Args:
        name_or_path: a run name in the workspace, or a store path; None for
            the workspace's only run (see `specdyn.store.resolve_run`).
        home: the workspace (``--home``; default ``$SPECDYN_HOME``, else
            ``./specdyn-runs``).

    Returns:
        The open `Run` (close it, or use it as a context manager).

    Raises:
        RunNotFoundError: no such run.
        StoreError: not an HDF5 file, not a specdyn store, a newer schema
            (upgrade specdyn or re-run analyze), or damaged.
    """
    return Run(resolve_run(name_or_path, home))
