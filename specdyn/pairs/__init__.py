"""Pairs of matrices whose singular vectors are compared (inter-layer alignment): presets
per architecture, a pairs file, and the operand slices. User documentation: ``docs/pairs.md``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from ._plan import (
        CONV_BASES,
        RULES,
        SIDES,
        TAP_MODES,
        ConvAlignment,
        Operand,
        OperandOp,
        Pair,
        PairPlan,
        PairsFileError,
        head_pairs,
        pairs_for,
        plan_pairs,
    )
    from ._presets import GATE_LETTERS

__all__ = [
    "CONV_BASES",
    "ConvAlignment",
    "GATE_LETTERS",
    "Operand",
    "OperandOp",
    "Pair",
    "PairPlan",
    "PairsFileError",
    "RULES",
    "SIDES",
    "TAP_MODES",
    "head_pairs",
    "pairs_for",
    "plan_pairs",
]

# each public name is imported from its module on first use (specdyn/lazy.py)
__getattr__, __dir__ = lazy_exports(__name__)
