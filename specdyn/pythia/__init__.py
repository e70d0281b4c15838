"""The Pythia suite: its catalog, the plan of a sweep, hub access and the sweep itself.
User documentation: ``docs/pythia.md``.
"""

from ._hub import STEP_BRANCH, Branch, Hub, HubError, HubFile, HubRevision
from ._sweep import (
    CATALOG,
    DUPLICATE_MODES,
    HubSteps,
    PythiaModel,
    PythiaPlan,
    PythiaResult,
    RevisionPlan,
    plan_pythia,
    pythia,
    resolve_model,
)

__all__ = [
    "Branch",
    "CATALOG",
    "DUPLICATE_MODES",
    "Hub",
    "HubError",
    "HubFile",
    "HubRevision",
    "HubSteps",
    "PythiaModel",
    "PythiaPlan",
    "PythiaResult",
    "RevisionPlan",
    "STEP_BRANCH",
    "plan_pythia",
    "pythia",
    "resolve_model",
]
