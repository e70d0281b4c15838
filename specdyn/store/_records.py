"""The store's records of steps and matrices (`StepRecord`, `MatrixRecord`): what a writer
is given about each, and how the step and matrix tables read back as records."""

from __future__ import annotations

import json
from dataclasses import dataclass

import h5py

from . import _layout as layout

__all__ = [
    "CheckpointProblem",
    "MatrixRecord",
    "StepRecord",
    "read_matrix_records",
    "read_problems",
    "read_step_records",
]


@dataclass(frozen=True)
class StepRecord:
    """Where one step's checkpoint came from, and its fingerprint.

    step: training step (or epoch when the run only knows epochs); epoch: the
    epoch when known, else None; source: the checkpoint path (file or folder);
    format: the checkpoint format tag; size: total bytes of its weight files;
    mtime: newest modification time of those files (seconds since the epoch);
    sha256: hex content hash ("" when not computed); origin: where the step number came
    from ("name", "metadata:global_step", "ancestor name", "hub branch", ...; "" when
    unknown, as in stores written before it was recorded).
    """

    step: int
    epoch: int | None
    source: str
    format: str
    size: int
    mtime: float
    sha256: str
    origin: str = ""


@dataclass(frozen=True)
class CheckpointProblem:
    """A checkpoint of the run that could not be analysed, kept visible in the store.

    source: the file or folder; kind: the discovery note's kind ("corrupt",
    "unsafe-pickle", "unreadable", "missing", "no-step", "bad-step", ...); message:
    the one-line reason, naming the file and what to do.
    """

    source: str
    kind: str
    message: str


@dataclass(frozen=True)
class MatrixRecord:
    """What the store records about one matrix view (see `specdyn.views.MatrixView`).

    name: canonical matrix name (never contains ``/``); param: canonical
    parameter name; key: raw checkpoint key; kind: view kind; part: slice tag
    or None; shape: (out, in) of the view; source_shape: the stored parameter's
    shape; source_dtype: its dtype ("float16", ...).
    """

    name: str
    param: str
    key: str
    kind: str
    part: str | None
    shape: tuple[int, int]
    source_shape: tuple[int, ...]
    source_dtype: str

    @property
    def rank(self) -> int:
        """R = min(out, in): the number of singular values."""
        return int(min(self.shape))


def read_step_records(f: h5py.File) -> list[StepRecord]:
    """The step axis of an open store as records, ascending (done steps or not)."""
    steps = f[layout.STEPS_STEP][()]
    epochs = f[layout.STEPS_EPOCH][()]
    sources = layout.read_strings(f[layout.STEPS_SOURCE])
    formats = layout.read_strings(f[layout.STEPS_FORMAT])
    sizes = f[layout.STEPS_SIZE][()]
    mtimes = f[layout.STEPS_MTIME][()]
    hashes = layout.read_strings(f[layout.STEPS_SHA256])
    origins = (
        layout.read_strings(f[layout.STEPS_ORIGIN])
        if layout.STEPS_ORIGIN in f
        else [""] * len(steps)
    )
    return [
        StepRecord(
            step=int(steps[i]),
            epoch=None if int(epochs[i]) == layout.EPOCH_UNKNOWN else int(epochs[i]),
            source=sources[i],
            format=formats[i],
            size=int(sizes[i]),
            mtime=float(mtimes[i]),
            sha256=hashes[i],
            origin=origins[i],
        )
        for i in range(len(steps))
    ]


def read_problems(f: h5py.File) -> list[CheckpointProblem]:
    """The store's unanalysed checkpoints (``/problems``), [] when it has none."""
    if layout.PROBLEMS not in f:
        return []
    columns = (layout.PROBLEMS_SOURCE, layout.PROBLEMS_KIND, layout.PROBLEMS_MESSAGE)
    rows = zip(*(layout.read_strings(f[c]) for c in columns), strict=True)
    return [CheckpointProblem(*row) for row in rows]


def read_matrix_records(f: h5py.File) -> list[MatrixRecord]:
    """The matrix table of an open store as records, in stored (forward) order."""
    names = layout.read_strings(f[layout.MATRICES_NAME])
    params = layout.read_strings(f[layout.MATRICES_PARAM])
    keys = layout.read_strings(f[layout.MATRICES_KEY])
    kinds = layout.read_strings(f[layout.MATRICES_KIND])
    parts = layout.read_strings(f[layout.MATRICES_PART])
    shapes = f[layout.MATRICES_SHAPE][()]
    source_shapes = layout.read_strings(f[layout.MATRICES_SOURCE_SHAPE])
    dtypes = layout.read_strings(f[layout.MATRICES_SOURCE_DTYPE])
    return [
        MatrixRecord(
            name=names[j],
            param=params[j],
            key=keys[j],
            kind=kinds[j],
            part=parts[j] or None,
            shape=(int(shapes[j][0]), int(shapes[j][1])),
            source_shape=tuple(int(d) for d in json.loads(source_shapes[j])),
            source_dtype=dtypes[j],
        )
        for j in range(len(names))
    ]
