"""Pairs of matrices whose singular vectors are compared (inter-layer alignment): presets
per architecture, a pairs file, and the operand slices. User documentation: ``docs/pairs.md``.
"""

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
