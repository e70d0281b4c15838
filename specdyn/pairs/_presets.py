"""Architecture presets for `specdyn.pairs`: which matrices feed which (docs/pairs.md#presets).

Detection is here, with the sequential, shape-chain and LSTM presets; transformers are in
`_attention`, ResNets and diffusers UNets in `_convnets`, what a preset states in `_specs`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..views import MatrixView, ViewPlan
from . import _attention, _convnets
from ._specs import (
    CONV_KINDS,
    GATE_LETTERS,
    TAP_MODES,
    PairSpec,
    PresetResult,
    Tap,
    conv_feed_problem,
    conv_tap,
    conv_taps,
    is_conv,
    is_grouped,
)

__all__ = [
    "GATE_LETTERS",
    "TAP_MODES",
    "PairSpec",
    "PresetResult",
    "Tap",
    "conv_tap",
    "conv_taps",
    "detect",
    "is_conv",
]

_CONV_KINDS = CONV_KINDS
_SEQUENTIAL_KINDS = {"linear", "conv", "conv_transpose"}
_RNN_NAME = re.compile(r"^(.*)\.weight_(ih|hh)_l(\d+)(_reverse)?$")


def detect(plan: ViewPlan, config: Mapping, gate: str) -> PresetResult:
    """Pick the preset that recognises the plan's matrices and state its pairs."""
    views = plan.matrices
    if _convnets.is_unet(views):
        return _convnets.unet(views, config)
    if _attention.recognises(views):
        return _attention.transformer(views, config, plan.aliases)
    if any(v.kind == "rnn_gate" for v in views):
        return _lstm(views, gate)
    if views and all(v.kind in _SEQUENTIAL_KINDS for v in views):
        if _convnets.has_side_branches(views):
            return _convnets.resnet(views)
        return _sequential(views)
    return _shape_chain(views)


# ------------------------------------------------------------------ sequential


def _sequential(views: Sequence[MatrixView]) -> PresetResult:
    """Layer i → layer i+1 in forward order; conv targets are cut to a tap by specdyn.pairs."""
    result = PresetResult([], [], [], "sequential")
    grouped: set[str] = set()
    for a, b in zip(views, views[1:], strict=False):
        desc = f"{a.name} → {b.name}"
        why = conv_feed_problem(a, b)
        if why is not None:
            if is_grouped(a, b):
                grouped.add(b.name)
            result.skipped.append((desc, why))
            continue
        if a.name in grouped:
            result.skipped.append((desc, "grouped/depthwise conv: no pair rule"))
            continue
        if a.kind in _CONV_KINDS and b.kind == "linear" and a.shape[0] != b.shape[1]:
            result.skipped.append((desc, (
                f"conv → linear after flatten: {a.shape[0]} channels vs {b.shape[1]} input "
                "features (flatten mixes spatial positions); dimensions do not match"
            )))  # fmt: skip
            continue
        if b.kind in _CONV_KINDS:
            # the tap (and the conv alignment definition) is added by specdyn.pairs
            result.pairs.append(PairSpec(a.name, "u", b.name, "v", "conv-centre-tap"))
        else:
            result.pairs.append(PairSpec(a.name, "u", b.name, "v", "sequential"))
    return result


def _shape_chain(views: Sequence[MatrixView]) -> PresetResult:
    """Unrecognised architecture: consecutive pairs only when all of them chain by shape."""
    whole = [v for v in views if v.part is None]
    problem = None
    if len(whole) < 2:
        problem = f"{len(whole)} matrix(es), nothing to chain"
    elif any(v.kind in _CONV_KINDS or v.kind == "expert" for v in whole):
        problem = "convolutions or experts mixed with other matrix kinds"
    else:
        for a, b in zip(whole, whole[1:], strict=False):
            if a.shape[0] != b.shape[1]:
                problem = f"{a.name} has {a.shape[0]} outputs but {b.name} {b.shape[1]} inputs"
                break
    if problem is not None:
        return PresetResult([], [], [(
            "no preset recognises this architecture and its matrices do not form one "
            f"unambiguous shape chain ({problem}); no pairs: write a pairs file "
            "(docs/pairs.md) and pass --pairs"
        )], "none")  # fmt: skip
    pairs = [
        PairSpec(a.name, "u", b.name, "v", "shape-chain")
        for a, b in zip(whole, whole[1:], strict=False)
    ]
    note = (
        "no preset recognises this architecture; pairs follow the shape chain of the "
        "matrices in forward order (rule shape-chain): check them, or write a pairs file"
    )
    return PresetResult(pairs, [], [note], "shape-chain")


# ------------------------------------------------------------------ LSTM


def _lstm(views: Sequence[MatrixView], gate: str) -> PresetResult:
    """LSTM/GRU pairs on one gate block: depth, input → hidden, hidden → next input."""
    result = PresetResult([], [], [], "lstm")
    cells: dict[tuple[str, int, bool], dict[str, MatrixView]] = {}
    letters: set[str] = set()
    for v in views:
        if v.kind != "rnn_gate":
            continue
        letters.add(v.part)
        m = _RNN_NAME.match(v.param)
        if m and v.part == gate:
            module, which, layer, reverse = m.groups()
            cells.setdefault((module, int(layer), bool(reverse)), {})[which] = v
    if gate not in letters:
        result.notes.append(
            f"gate {gate!r} is not a gate block of this network (blocks: "
            f"{' '.join(sorted(letters))}); no LSTM pairs: pass --gate with one of them"
        )
        return result
    opts = {"gate": gate}
    for module in sorted({k[0] for k in cells}):
        layers = sorted({k[1] for k in cells if k[0] == module})
        directions = [False, True] if any(k[0] == module and k[2] for k in cells) else [False]
        for layer in layers:
            for rev in directions:
                cell = cells.get((module, layer, rev), {})
                if "ih" in cell and "hh" in cell:
                    result.pairs.append(PairSpec(
                        cell["ih"].name, "u", cell["hh"].name, "v", "lstm-ih-to-hh", options=opts
                    ))  # fmt: skip
            if layer + 1 not in layers:
                continue
            for src_rev in directions:
                src = cells.get((module, layer, src_rev), {})
                for dst_rev in directions:
                    dst = cells.get((module, layer + 1, dst_rev), {}).get("ih")
                    if dst is None:
                        continue
                    ops: tuple = ()
                    options = dict(opts)
                    if len(directions) == 2:
                        half = dst.shape[1] // 2
                        ops = (("cols", half, 2 * half, 1) if src_rev else ("cols", 0, half, 1),)
                        options["half"] = "reverse" if src_rev else "forward"
                    for which, rule in (("ih", "lstm-depth"), ("hh", "lstm-hh-to-ih")):
                        if which in src:
                            result.pairs.append(PairSpec(
                                src[which].name, "u", dst.name, "v", rule,
                                second_ops=ops, options=options,
                            ))  # fmt: skip
    return result
