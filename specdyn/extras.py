"""The optional dependencies, imported on demand (the extras of ``pyproject.toml``).

Every package imports an optional library through `require_extra`, so that a missing one
is one line naming what needs it and the pip extra that installs it, never a traceback:

    pd = require_extra("pandas", "pandas", "Run.to_pandas")
    # MissingExtraError: Run.to_pandas needs pandas, which is not installed:
    #   pip install 'specdyn[pandas]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["EXTRAS", "require_extra"]

# extra → the import names it installs (pyproject.toml's optional-dependencies)
EXTRAS: dict[str, tuple[str, ...]] = {
    "pandas": ("pandas", "pyarrow"),
    "xarray": ("xarray", "h5netcdf", "pandas"),
    "dist": ("distributed", "dask"),
    "bench": ("weightwatcher",),
}


def require_extra(
    module: str, extra: str, what: str, *, name: str | None = None, option: str | None = None
) -> ModuleType:
    """Import an optional module, or say which extra installs it.

    Args:
        module: the import name (``"pyarrow.parquet"`` imports that submodule).
        extra: the pip extra that installs it (a key of `EXTRAS`).
        what: what needs it, for the message (``"export to parquet"``; an `option_ref`
            when an option asks for it).
        name: the library as the message names it (default: the top-level `module`).
        option: the parameter whose value needs it (the error's ``option`` field).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: the module cannot be imported (also when ``sys.modules`` holds
            None for it); fields ``module``, ``extra``, ``what``, ``name``, ``option``.
    """
    try:
        # the top-level package first: a submodule imported earlier stays in sys.modules
        # after its package is gone
        importlib.import_module(module.split(".")[0])
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            module.split(".")[0], extra, what, name=name, option=option
        ) from None
