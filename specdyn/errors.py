"""Errors specdyn raises.

Every error carries a one-line message that names the file (or run, or option)
at fault and says what to do. The CLI prints ``str(error)`` and exits non-zero;
``SPECDYN_DEBUG=1`` shows the traceback as well.
"""

from __future__ import annotations

__all__ = [
    "SpecdynError",
    "CheckpointError",
    "UnsafePickleError",
    "DiscoveryError",
    "StepSpecError",
    "ViewError",
    "ShapeChangedError",
    "EngineError",
    "StoreError",
    "StoreWriteError",
    "StoreLockedError",
    "StoreMismatchError",
    "RunNotFoundError",
    "CompareError",
]


class SpecdynError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""

    exit_code = 1


class CheckpointError(SpecdynError):
    """A checkpoint file is missing, unreadable, truncated, corrupt or not a checkpoint."""


class UnsafePickleError(CheckpointError):
    """A pickle asked to import or call something other than tensors and containers.

    Nothing from the file was run; the message names the global it asked for.
    """


class DiscoveryError(SpecdynError):
    """A path holds no checkpoints, or holds them in a way that cannot be ordered."""


class StepSpecError(SpecdynError):
    """A ``--steps`` value does not parse or selects nothing."""


class ViewError(SpecdynError):
    """A parameter cannot be turned into the matrix view asked for."""


class ShapeChangedError(SpecdynError):
    """A matrix has a different shape at one step than at the first analysed step."""


class EngineError(SpecdynError):
    """The SVD engine cannot run as configured (bad device, memory bound too small)."""


class StoreError(SpecdynError):
    """A store is missing, damaged, of an unknown schema or cannot be written."""


class StoreWriteError(StoreError):
    """Writing a step failed (full disk, file size limit, I/O error): the step is left
    not done, the finished ones are kept and the writer is closed."""


class StoreLockedError(StoreError):
    """Another process is writing this store."""


class StoreMismatchError(StoreError):
    """A store belongs to another run, or was made with options that would change its numbers."""


class RunNotFoundError(StoreError):
    """No run of that name or path in the workspace."""


class CompareError(SpecdynError):
    """Runs cannot be compared as asked (nothing in common, no vectors or checkpoints
    for an endpoint, a branch without a split step, a failing evaluator)."""
