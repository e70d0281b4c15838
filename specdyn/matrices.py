"""The matrix pipeline: a checkpoint → its planned views → (view, matrix) pairs, reading one
parameter tensor (or a byte-bounded group of them) at a time.

    with ckpt.open() as reader:
        planned = plan_checkpoint(ckpt, reader=reader)
        for group in read_matrices(reader, planned.plan.matrices, group_bytes=64 * 2**20):
            results = engine.singular_values(group.matrices)   # one batch per group

Memory holds the tensors of one group, never the checkpoint. `specdyn.analyze` reads in
byte-bounded groups (same-shape matrices then batch in the engine), `specdyn.compare`
(vectors from checkpoints) and the magnitude masks of `specdyn.prune` one parameter at a
time; SVD pruning cuts the views from the tensor the checkpoint writer hands it
(`cut_matrices`), since the writer reads the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .sources import Checkpoint, TensorReader
from .types import TensorInfo
from .views import MatrixView, Skipped, ViewPlan, plan_views

__all__ = [
    "PlannedCheckpoint",
    "plan_checkpoint",
    "views_by_parameter",
    "cut_matrices",
    "MatrixGroup",
    "read_matrices",
]


@dataclass
class PlannedCheckpoint:
    """A checkpoint's matrix views, planned from its metadata (no tensor data read).

    keys: the raw keys in the checkpoint's order; infos: raw key → `TensorInfo`;
    plan: the `ViewPlan`, with every unsupported tensor (quantised, sparse, a tensor
    subclass: never read) among its skipped entries.
    """

    keys: list[str]
    infos: dict[str, TensorInfo]
    plan: ViewPlan


def plan_checkpoint(
    ckpt: Checkpoint,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    transposed: str | None = None,
    reader: TensorReader | None = None,
) -> PlannedCheckpoint:
    """Plan the matrix views of one checkpoint (`specdyn.views.plan_views`).

    Args:
        ckpt: the checkpoint; its ``config.json`` (head counts, model type) is used.
        include, exclude, transposed: as `plan_views` (regexes on canonical names).
        reader: an open reader of `ckpt`, to plan without opening it again; None
            opens (and closes) one.

    Returns:
        `PlannedCheckpoint`: keys, tensor metadata and the plan (views in forward
        order, ties between keys broken by the checkpoint's order).

    Raises:
        CheckpointError: the checkpoint cannot be opened. ViewError: an invalid regex,
            or two keys with one canonical name.
    """
    if reader is None:
        with ckpt.open() as opened:
            return plan_checkpoint(
                ckpt, include=include, exclude=exclude, transposed=transposed, reader=opened
            )
    keys = reader.keys()
    infos = {key: reader.info(key) for key in keys}
    plan = plan_views(
        infos,
        config=ckpt.config,
        include=include,
        exclude=exclude,
        transposed=transposed,
        source_order=keys,
    )
    for key, built_by in getattr(reader, "unsupported", {}).items():
        # quantised / sparse / subclass tensors are never read: count them, never drop silently
        plan.skipped.append(
            Skipped(key, key, f"unsupported tensor type (built by {built_by}); not read")
        )
    return PlannedCheckpoint(keys=keys, infos=infos, plan=plan)


def views_by_parameter(views: Iterable[MatrixView]) -> dict[str, list[MatrixView]]:
    """Raw key → its views: keys in the order they first appear in `views`, each key's
    views in `views` order (the order `read_matrices` yields them in)."""
    by_key: dict[str, list[MatrixView]] = {}
    for view in views:
        by_key.setdefault(view.key, []).append(view)
    return by_key


def cut_matrices(
    tensor: torch.Tensor, views: Iterable[MatrixView]
) -> Iterator[tuple[MatrixView, torch.Tensor]]:
    """(view, matrix) for each view of one parameter, each cut when it is asked for.

    Args:
        tensor: the whole parameter, shape `view.source_shape`, any dtype and device.
        views: views of that parameter.

    Yields:
        (view, matrix): the (out, in) matrix of `view.shape`, `tensor`'s dtype and
        device (`MatrixView.extract`: a view of `tensor` where possible).

    Raises:
        ViewError: `tensor` does not have a view's `source_shape`.
    """
    for view in views:
        yield view, view.extract(tensor)


class MatrixGroup:
    """Matrices cut from parameter tensors read together, in `read_matrices` order.

    views, matrices: parallel lists; each matrix is (out, in) in its tensor's stored
    dtype (see `cut_matrices`). tensors: raw key → the whole parameter tensor as read.
    nbytes: the stored bytes of those tensors. Iterating gives (view, matrix) pairs.

    `read_matrices` empties a group when the next one is asked for, so that memory
    holds one group at a time: use (or copy) what you need before moving on.
    """

    def __init__(self) -> None:
        self.views: list[MatrixView] = []
        self.matrices: list[torch.Tensor] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.nbytes = 0

    def __iter__(self) -> Iterator[tuple[MatrixView, torch.Tensor]]:
        return iter(zip(self.views, self.matrices, strict=True))

    def __len__(self) -> int:
        return len(self.views)

    def _add(self, key: str, tensor: torch.Tensor, views: Sequence[MatrixView]) -> None:
        """Add one parameter tensor and its views' matrices."""
        for view, matrix in cut_matrices(tensor, views):
            self.views.append(view)
            self.matrices.append(matrix)
        self.tensors[key] = tensor
        self.nbytes += tensor.numel() * tensor.element_size()

    def _clear(self) -> None:
        """Drop every tensor and matrix (the group is used up)."""
        self.views, self.matrices, self.tensors, self.nbytes = [], [], {}, 0


def read_matrices(
    reader: TensorReader,
    views: Sequence[MatrixView],
    *,
    group_bytes: int = 0,
) -> Iterator[MatrixGroup]:
    """The views' matrices, reading each parameter tensor once, one (or a few) at a time.

    Parameters are read in the order their first view appears in `views`, and every
    view of a parameter is cut from that one read (`views_by_parameter`), so matrices
    come in that order too. Consecutive parameters are gathered into one group until
    their stored bytes reach `group_bytes`; the last group may be smaller.

    Args:
        reader: an open `TensorReader` (``Checkpoint.open()``) holding every view's key.
        views: the matrix views to read (from one `ViewPlan`, or a selection of them).
        group_bytes: how many stored bytes a group gathers before it is yielded;
            0 (the default) yields one group per parameter.

    Yields:
        `MatrixGroup`s. Each is emptied when the next is asked for (and when the
        iteration ends), so memory holds the tensors of one group, not the checkpoint.

    Raises:
        CheckpointError: a tensor cannot be read. ViewError: a tensor does not have
            its views' `source_shape`.
    """
    group = MatrixGroup()
    try:
        for key, key_views in views_by_parameter(views).items():
            tensor = reader.get(key)
            group._add(key, tensor, key_views)
            del tensor  # only the group holds it now: emptied, it is freed before the next read
            if group.nbytes >= group_bytes:
                yield group
                group._clear()
                group = MatrixGroup()
        if len(group):
            yield group
    finally:
        group._clear()
