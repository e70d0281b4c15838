"""Every error specdyn raises, in one place.

Each error is a one-line message that names the file (or run, or option) at fault and
says what to do, with the same facts as fields: ``file``, ``step`` and ``option``.

Messages speak to whoever called: a Python caller never typed ``--max-memory``, a CLI
user never typed ``max_memory=``. So a message names an option through `option_ref`
(or a command through `command_ref`), which records both spellings; ``str(error)`` gives
the Python wording and the CLI asks for ``error.render(cli=True)``. The CLI prints one
line and exits non-zero; ``SPECDYN_DEBUG=1`` shows the traceback as well.

    raise StepSpecError(f"{option_ref('steps')} {spec!r}: cannot parse", option="steps")
    str(err)               # "steps '3:x': cannot parse"
    err.render(cli=True)   # "--steps '3:x': cannot parse"
"""

from __future__ import annotations

import os
import re

__all__ = [
    "option_ref",
    "command_ref",
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
    "StoreDamagedError",
    "RunNotFoundError",
    "CompareError",
    "PairsFileError",
    "HubError",
    "PlotError",
    "PruneError",
    "DemoError",
    "MissingExtraError",
]

# An option or command reference inside a message: NUL-delimited, so that no path, value
# or text a user can give (paths cannot hold NUL; the CLI escapes control characters it
# prints) is taken for one. Fields: kind ("o" option, "c" command), Python and CLI wording.
_REF = re.compile("\x00([oc])\x1f([^\x00\x1f]*)\x1f([^\x00\x1f]*)\x00")


def option_ref(name: str, flag: str | None = None) -> str:
    """An option named in an error message: `name` as a Python caller spells it
    (``"max_memory"``, ``"vectors=None"``), `flag` as the CLI does (default: ``--`` and the
    name with ``_`` turned into ``-``). Put the result in the message text."""
    flag = flag if flag is not None else "--" + name.replace("_", "-")
    return f"\x00o\x1f{name}\x1f{flag}\x00"


def command_ref(name: str) -> str:
    """A specdyn command named in an error message (``"analyze"``): ``specdyn.analyze()``
    for a Python caller, ``specdyn analyze`` on the command line."""
    return f"\x00c\x1fspecdyn.{name}()\x1fspecdyn {name}\x00"


class SpecdynError(Exception):
    """Base class: a user-facing problem with a one-line explanation.

    message: the text, option and command names in it made with `option_ref` and
    `command_ref`. file: the file, store or folder at fault. step: the training step
    concerned. option: the parameter (Python name) whose value is at fault.
    """

    exit_code = 1

    def __init__(
        self,
        message: str = "",
        *,
        file: str | os.PathLike | None = None,
        step: int | None = None,
        option: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = None if file is None else os.fspath(file)
        self.step = step
        self.option = option

    def render(self, *, cli: bool = False) -> str:
        """The message with every option and command in Python wording, or the CLI's."""
        return _REF.sub(lambda m: m.group(3) if cli else m.group(2), self.message)

    @property
    def options(self) -> tuple[str, ...]:
        """The options the message names (Python names), in order."""
        return tuple(m.group(2) for m in _REF.finditer(self.message) if m.group(1) == "o")

    def __str__(self) -> str:
        return self.render()


class CheckpointError(SpecdynError):
    """A checkpoint file is missing, unreadable, truncated, corrupt or not a checkpoint."""


class UnsafePickleError(CheckpointError):
    """A pickle asked to import or call something other than tensors and containers.

    Nothing from the file was run; the message names the global it asked for.
    """


class DiscoveryError(SpecdynError):
    """A path holds no checkpoints, or holds them in a way that cannot be ordered."""


class StepSpecError(SpecdynError):
    """A ``steps`` value (``--steps``) does not parse or selects nothing."""

    def __init__(self, message: str = "", *, option: str | None = "steps", **fields) -> None:
        super().__init__(message, option=option, **fields)


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


class StoreDamagedError(StoreError):
    """A store's content does not match its checksums: bytes changed on disk after they
    were written (`specdyn verify` lists every damaged step and section)."""


class RunNotFoundError(StoreError):
    """No run of that name or path in the workspace."""


class CompareError(SpecdynError):
    """Runs cannot be compared as asked (nothing in common, no vectors or checkpoints
    for an endpoint, a branch without a split step, a failing evaluator)."""


class PairsFileError(SpecdynError):
    """A pairs file does not parse, names an unknown matrix or gives a bad option."""


class HubError(SpecdynError):
    """The hub (or the local cache) cannot give what was asked."""


class PlotError(SpecdynError):
    """A figure cannot be drawn from this store (say which analyze option adds what is missing)."""


class PruneError(SpecdynError):
    """A pruning request that cannot be carried out (bad mode, fraction, output path)."""


class DemoError(SpecdynError):
    """A demo option is out of range, or the output folder holds another run."""


class MissingExtraError(SpecdynError):
    """An optional dependency is not installed: `module` (its import name) is missing and
    the pip extra `extra` installs it (``pip install 'specdyn[EXTRA]'``); `what` names
    what needs it (an `option_ref` when an option asks for it); `name` is the library's
    name in the message (default `module`). `specdyn.extras.require_extra` raises it."""

    def __init__(
        self, module: str, extra: str, what: str, *, name: str | None = None, **fields
    ) -> None:
        super().__init__(
            f"{what} needs {name or module}, which is not installed: "
            f"pip install 'specdyn[{extra}]'",
            **fields,
        )
        self.module = module
        self.extra = extra
        self.what = what
        self.name = name

    def __reduce__(self):
        """Rebuilt from its fields (a worker process sends it back pickled)."""
        args = (self.module, self.extra, self.what)
        return (_rebuild_missing_extra, (type(self), args, dict(self.__dict__)))


def _rebuild_missing_extra(cls: type, args: tuple, state: dict) -> MissingExtraError:
    """A pickled `MissingExtraError` rebuilt: its message from its fields, then its state."""
    err = cls(*args, name=state.get("name"))
    err.__dict__.update(state)
    return err
