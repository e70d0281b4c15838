"""Small value types shared by sources, views and the pipeline."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorInfo:
    """What is known about one stored tensor without reading its data.

    shape: the stored shape; dtype: the stored torch dtype; storage_id: an opaque
    key equal for two names that share one storage at the same offset, shape and
    stride (tied weights), else None when the format cannot tell.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    storage_id: Hashable | None = None

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Note:
    """A warned skip or an observation the user must see (never raised).

    kind: a short tag, e.g. "duplicate", "skipped-file", "unsafe-pickle",
    "nonfinite", "zero-matrix", "fallback", "changed-source";
    message: one line saying what happened and, where useful, what to do;
    path: the file or matrix concerned, if any.
    """

    kind: str
    message: str
    path: str | None = None
