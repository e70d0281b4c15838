"""Pairs of matrices whose singular vectors are compared (inter-layer alignment): presets
per architecture, a pairs file, and the operand slices. User documentation: ``docs/pairs.md``.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

# each public name is imported from its module on first use (specdyn/lazy.py)
_HOMES = {
    "CONV_BASES": "._plan",
    "RULES": "._plan",
    "SIDES": "._plan",
    "TAP_MODES": "._plan",
    "ConvAlignment": "._plan",
    "Operand": "._plan",
    "OperandOp": "._plan",
    "Pair": "._plan",
    "PairPlan": "._plan",
    "PairsFileError": "._plan",
    "head_pairs": "._plan",
    "pairs_for": "._plan",
    "plan_pairs": "._plan",
    "GATE_LETTERS": "._presets",
}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

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
