"""Pruning by singular values (SVD truncation) and by magnitude masks, scored by singular
vector agreement. User documentation: ``docs/prune.md``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

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

# each public name is imported from its module on first use (specdyn/lazy.py)
__getattr__, __dir__ = lazy_exports(__name__)
