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


def require_extra(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional module, or say which extra installs it.

    Args:
        module: the import name (``"pyarrow.parquet"`` imports that submodule).
        extra: the pip extra that installs it (a key of `EXTRAS`).
        what: what needs it, for the message (``"export to parquet"``).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: the module cannot be imported (also when ``sys.modules`` holds
            None for it); fields ``module``, ``extra`` and ``what``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module.split(".")[0], extra, what) from None
