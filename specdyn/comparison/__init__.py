"""Comparing runs: metrics on one step axis, branch agreement, split summaries and the loss
barrier, written to a comparison store. User documentation: ``docs/compare.md``.

The comparison store itself (`Comparison`, `open_comparison`, `write_comparison`,
`comparison_path`) lives in `specdyn.store` with the run store; it is re-exported here.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from ..store import Comparison, comparison_path, open_comparison, write_comparison
    from ._barrier import BarrierOptions, BarrierResult, barrier_between, load_evaluator
    from ._compare import (
        COMPARE_MODES,
        CompareResult,
        PairAgreement,
        RunEntry,
        SplitSummary,
        chance_agreement,
        compare,
    )

__all__ = [
    "BarrierOptions",
    "BarrierResult",
    "COMPARE_MODES",
    "CompareResult",
    "Comparison",
    "PairAgreement",
    "RunEntry",
    "SplitSummary",
    "barrier_between",
    "chance_agreement",
    "compare",
    "comparison_path",
    "load_evaluator",
    "open_comparison",
    "write_comparison",
]

# each public name is imported from its module on first use (specdyn/lazy.py)
__getattr__, __dir__ = lazy_exports(__name__)
