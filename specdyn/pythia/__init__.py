"""The Pythia suite: its catalog, the plan of a sweep, hub access and the sweep itself (here,
or on Dask workers: `ClusterSteps`, `RemoteRevision`). User documentation: ``docs/pythia.md``,
``docs/distributed.md#pythia-on-workers``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from ._hub import STEP_BRANCH, Branch, Hub, HubError, HubFile, HubRevision
    from ._sweep import (
        CATALOG,
        DUPLICATE_MODES,
        ClusterSteps,
        HubSteps,
        PythiaModel,
        PythiaPlan,
        PythiaResult,
        RemoteRevision,
        RevisionPlan,
        plan_pythia,
        pythia,
        resolve_model,
    )

__all__ = [
    "Branch",
    "CATALOG",
    "ClusterSteps",
    "DUPLICATE_MODES",
    "Hub",
    "HubError",
    "HubFile",
    "HubRevision",
    "HubSteps",
    "PythiaModel",
    "PythiaPlan",
    "PythiaResult",
    "RemoteRevision",
    "RevisionPlan",
    "STEP_BRANCH",
    "plan_pythia",
    "pythia",
    "resolve_model",
]

# each public name is imported from its module on first use (specdyn/lazy.py)
__getattr__, __dir__ = lazy_exports(__name__)
