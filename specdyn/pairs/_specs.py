"""What a preset states (docs/pairs.md#presets): pair specs, results, conv taps, config lookups."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..naming import split_slice
from ..views import MatrixView

GATE_LETTERS = ("i", "f", "g", "o", "r", "z", "n")

CONV_KINDS = ("conv", "conv_transpose")

# Tap modes besides explicit kernel indices: the centre tap (k//2 in every spatial dim;
# for an even k the upper of the two central taps), every tap kept, or their mean.
TAP_MODES = ("centre", "all", "mean")


@dataclass(frozen=True)
class PairSpec:
    """A pair as a preset states it: matrix names, sides, operand ops, rule, options.

    On a conv operand compared on v, `*_ops` select input channels (c_in columns of the
    tap); `specdyn.pairs` turns them into kernel columns before the tap is cut.
    """

    first: str
    first_side: str
    second: str
    second_side: str
    rule: str
    first_ops: tuple = ()
    second_ops: tuple = ()
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PresetResult:
    """What a preset found: pair specs, (description, reason) skips, notes, preset name."""

    pairs: list[PairSpec]
    skipped: list[tuple[str, str]]
    notes: list[str]
    preset: str


@dataclass(frozen=True)
class Tap:
    """A conv kernel tap: per-spatial-dim indices (or "all"/"mean") and the column op
    selecting it from the (c_out, c_in·∏k) view."""

    index: tuple[int, ...] | str
    op: tuple

    @property
    def option(self) -> list[int] | str:
        """The JSON value recorded as the pair's ``tap`` option."""
        return self.index if isinstance(self.index, str) else list(self.index)


def conv_tap(where: str, view: MatrixView, tap: Any, error: type[Exception]) -> Tap:
    """The column slice of a (c_out, c_in·∏k) conv view at one kernel tap ("centre" or
    indices), or the ∏k strided slices of every tap ("all" / "mean")."""
    kernel = tuple(view.source_shape[2:])
    taps = math.prod(kernel)
    if tap in ("all", "mean"):
        # columns are c_in-major (c·∏k + flat tap): tap t is every ∏k-th column from t
        return Tap(tap, ("col_taps", taps))
    if tap == "centre" or tap == "center":
        index = tuple(k // 2 for k in kernel)
    elif isinstance(tap, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in tap):
        index = tuple(tap)
        if len(index) != len(kernel) or any(
            not 0 <= i < k for i, k in zip(index, kernel, strict=True)
        ):
            raise error(
                f"{where}: tap {tap!r} does not fit kernel {'×'.join(map(str, kernel))} "
                f"of {view.name}"
            )
    else:
        raise error(
            f'{where}: tap {tap!r}: write "centre", "all", "mean" or a list of kernel indices'
        )
    flat = 0
    for i, k in zip(index, kernel, strict=True):
        flat = flat * k + i
    return Tap(index, ("cols", flat, view.shape[1], taps))


def is_conv(view: MatrixView) -> bool:
    """Whether a view is a (transposed) convolution kernel, flattened to (c_out, c_in·∏k)."""
    return view.kind in CONV_KINDS


def conv_taps(view: MatrixView) -> int:
    """∏k of a conv view (1 for any other view)."""
    return math.prod(view.source_shape[2:]) if is_conv(view) else 1


def in_width(view: MatrixView) -> int:
    """Length of a view's compared v vectors: c_in for a conv (one tap), else its columns."""
    return view.shape[1] // conv_taps(view)


# Leaf modules that read the network's input (a 1-channel image), never a previous layer.
INPUT_CONVS = {"conv_in", "stem", "conv_first", "input_conv", "in_conv", "patch_embed"}


def is_grouped(a: MatrixView, b: MatrixView) -> bool:
    """Whether conv b's shapes imply groups > 1 when a feeds it.

    b reads ``per_group = weight.shape[1]`` channels of each group; a's ``c = a.shape[0]``
    outputs then split into ``c / per_group`` groups. One input channel per group alone is
    no evidence (a grayscale ``conv_in`` has ``weight.shape[1] == 1`` too): depthwise also
    needs a conv a, out channels a multiple of the groups, and b not an input conv.
    """
    if not is_conv(b):
        return False
    per_group, c = in_width(b), a.shape[0]
    if c == per_group or c % per_group != 0:
        return False
    if per_group > 1:
        return True
    return is_conv(a) and b.shape[0] % c == 0 and leaf_module(b.param) not in INPUT_CONVS


def conv_feed_problem(a: MatrixView, b: MatrixView) -> str | None:
    """Why a cannot be paired with conv b by a tap (grouped, or b reads 1 input channel
    that a's outputs do not make), or None."""
    if is_grouped(a, b):
        return (
            f"grouped/depthwise conv ({in_width(b)} input channels per group of "
            f"{a.shape[0]}): no pair rule; write a pairs file to pair it"
        )
    if is_conv(b) and in_width(b) == 1 and a.shape[0] != 1:
        return (
            f"{b.name} reads 1 input channel (the model's input), not {a.name}'s "
            f"{a.shape[0]} outputs; dimensions do not match"
        )
    return None


def link(a: MatrixView, b: MatrixView, result: PresetResult, rule: str | None = None) -> bool:
    """Pair a's u with b's v (a feeds b), or record why not; True when paired.

    A conv b is compared at a kernel tap (rule ``conv-centre-tap`` unless `rule` is given);
    a conv a → linear b is paired only when b reads a's channels (global pooling).
    """
    desc = f"{a.name} → {b.name}"
    why = conv_feed_problem(a, b)
    if why is not None:
        result.skipped.append((desc, why))
        return False
    if is_conv(a) and b.kind == "linear" and a.shape[0] != b.shape[1]:
        result.skipped.append((desc, (
            f"conv → linear after flatten: {a.shape[0]} channels vs {b.shape[1]} input "
            "features (flatten mixes spatial positions); dimensions do not match"
        )))  # fmt: skip
        return False
    default = "conv-centre-tap" if is_conv(b) else "sequential"
    result.pairs.append(PairSpec(a.name, "u", b.name, "v", rule or default))
    return True


def cfg_int(config: Mapping, *names: str) -> int | None:
    """First integer config value under `names` (or in text_config)."""
    for scope in (config, config.get("text_config")):
        if isinstance(scope, Mapping):
            for name in names:
                value = scope.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
    return None


def leaf_module(param: str) -> str:
    """The owning module's name: ``a.q_proj.weight`` → ``q_proj``."""
    parts = split_slice(param)[0].split(".")
    return parts[-2] if len(parts) >= 2 else ""
