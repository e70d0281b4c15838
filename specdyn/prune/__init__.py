"""Pruning by singular values (SVD truncation) and by magnitude masks, scored by singular
vector agreement. User documentation: ``docs/prune.md``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# each public name is imported from its module on first use (specdyn/lazy.py)
_HOMES = {
    "PruneError": "..errors",
    "PruneResults": "..store",
    "read_prune_results": "..store",
    "MagnitudePruneResult": "._common",
    "MaskedMatrix": "._common",
    "MaskedParameter": "._common",
    "PrunedCheckpoint": "._common",
    "PrunedMatrix": "._common",
    "SvdPruneResult": "._common",
    "Untouched": "._common",
    "singular_vector_agreement": "._common",
    "view_indices": "._common",
    "MAGNITUDE_KINDS": "._masks",
    "prune_magnitude": "._masks",
    "SvdMode": "._svd",
    "parse_svd_mode": "._svd",
    "prune_svd": "._svd",
    "svd_truncate": "._svd",
}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from ..errors import PruneError
    from ..store import PruneResults, read_prune_results
    from ._common import (
        MagnitudePruneResult,
        MaskedMatrix,
        MaskedParameter,
        PrunedCheckpoint,
        PrunedMatrix,
        SvdPruneResult,
        Untouched,
        singular_vector_agreement,
        view_indices,
    )
    from ._masks import MAGNITUDE_KINDS, prune_magnitude
    from ._svd import SvdMode, parse_svd_mode, prune_svd, svd_truncate

__all__ = [
    "MAGNITUDE_KINDS",
    "MagnitudePruneResult",
    "MaskedMatrix",
    "MaskedParameter",
    "PruneError",
    "PruneResults",
    "PrunedCheckpoint",
    "PrunedMatrix",
    "SvdMode",
    "SvdPruneResult",
    "Untouched",
    "parse_svd_mode",
    "prune_magnitude",
    "prune_svd",
    "read_prune_results",
    "singular_vector_agreement",
    "svd_truncate",
    "view_indices",
]
