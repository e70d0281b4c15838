"""The Pythia suite: its catalog, the plan of a sweep, hub access and the sweep itself (here,
or on Dask workers: `ClusterSteps`, `RemoteRevision`). User documentation: ``docs/pythia.md``,
``docs/distributed.md#pythia-on-workers``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# each public name is imported from its module on first use (specdyn/lazy.py)
_HOMES = {
    "STEP_BRANCH": "._hub",
    "Branch": "._hub",
    "Hub": "._hub",
    "HubError": "._hub",
    "HubFile": "._hub",
    "HubRevision": "._hub",
    "CATALOG": "._sweep",
    "DUPLICATE_MODES": "._sweep",
    "ClusterSteps": "._sweep",
    "HubSteps": "._sweep",
    "PythiaModel": "._sweep",
    "PythiaPlan": "._sweep",
    "PythiaResult": "._sweep",
    "RemoteRevision": "._sweep",
    "RevisionPlan": "._sweep",
    "plan_pythia": "._sweep",
    "pythia": "._sweep",
    "resolve_model": "._sweep",
}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

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
