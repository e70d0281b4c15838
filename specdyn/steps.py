"""The ``--steps`` grammar (docs/runs.md#steps-grammar): which training steps of a run to analyse
or plot.

A spec is a comma-separated union of items; every value is a training step (or an
epoch, for runs whose step axis is epochs), never an index:

- ``1000``: exactly that step; it must be available.
- ``A:B``: every available step in [A, B]; ``A:`` and ``:B`` leave one end open.
- ``A:B:S``: the available steps on the grid A, A+S, A+2S, … ≤ B (B included when it
  is on the grid).
- ``lin:N`` / ``log:N``: N of the available steps spread evenly in step / in
  log(1 + step), always including the first and the last and never the same step twice;
  N ≥ the number available selects them all.

``None`` or an empty string selects every available step.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import StepSpecError, option_ref

_STEPS = option_ref("steps")  # how a message names the option: steps=… or --steps

__all__ = ["StepItem", "StepSpec", "parse_steps", "select_steps"]

_GRAMMAR = "expected e.g. 0,1000,5000 | A:B | A:B:S | lin:N | log:N"
_INT = r"\s*(\d+)\s*"
_RANGE = re.compile(rf"^(?:{_INT})?:(?:{_INT})?(?::{_INT})?$")
_SPREAD = re.compile(r"^\s*(lin|log)\s*:\s*(\d+)\s*$", re.IGNORECASE)
_SINGLE = re.compile(rf"^{_INT}$")


@dataclass(frozen=True)
class StepItem:
    """One comma-separated item of a ``--steps`` spec.

    kind: "step" (value in ``start``), "range" (``start``/``stop`` inclusive, either may
    be None for an open end; ``stride`` None = every available step in the range),
    "lin" or "log" (``count`` steps spread evenly). ``text`` is the item as written.
    """

    kind: str
    text: str
    start: int | None = None
    stop: int | None = None
    stride: int | None = None
    count: int | None = None


@dataclass(frozen=True)
class StepSpec:
    """A parsed ``--steps`` spec: the union of its items (empty = every step)."""

    items: tuple[StepItem, ...]
    text: str = ""

    def select(self, available: Sequence[int]) -> list[int]:
        """The selected steps among `available`, sorted ascending, without repeats.

        Raises StepSpecError when an explicit step is not available or an item selects
        nothing.
        """
        steps = sorted({int(s) for s in available})
        if not self.items:
            return steps
        if not steps:
            raise StepSpecError(f"{_STEPS} {self.text!r}: the run has no steps to select from")
        chosen: set[int] = set()
        for item in self.items:
            chosen.update(_select_item(item, steps))
        return sorted(chosen)


def parse_steps(spec: str | None) -> StepSpec:
    """Parse a ``--steps`` value (grammar in the module docstring) without checking steps.

    Raises StepSpecError (one line) when an item does not parse or is inconsistent
    (A > B, a zero stride, N < 1).
    """
    if spec is None or not spec.strip():
        return StepSpec(items=(), text=spec or "")
    items = []
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            raise StepSpecError(f"{_STEPS} {spec!r}: empty item between commas; {_GRAMMAR}")
        items.append(_parse_item(text, spec))
    return StepSpec(items=tuple(items), text=spec)


def select_steps(available: Sequence[int], spec: str | None) -> list[int]:
    """Select training steps per the ``--steps`` grammar (docs/runs.md#steps-grammar).

    Args:
        available: the steps a run holds (any order; repeats are ignored).
        spec: the ``--steps`` value; None or "" selects everything.

    Returns:
        A sorted list of distinct steps, a subset of `available`.

    Raises:
        StepSpecError: the spec does not parse, names a step that is not available
            (the message lists the nearest available ones), or an item selects nothing.
    """
    return parse_steps(spec).select(available)


def _parse_item(text: str, spec: str) -> StepItem:
    """Parse one comma-separated item."""
    m = _SINGLE.match(text)
    if m:
        return StepItem("step", text, start=int(m.group(1)))
    m = _SPREAD.match(text)
    if m:
        count = int(m.group(2))
        if count < 1:
            raise StepSpecError(f"{_STEPS} item {text!r}: N must be at least 1")
        return StepItem(m.group(1).lower(), text, count=count)
    m = _RANGE.match(text)
    if m:
        start, stop, stride = (int(g) if g is not None else None for g in m.groups())
        if start is not None and stop is not None and start > stop:
            raise StepSpecError(f"{_STEPS} item {text!r}: start {start} is after end {stop}")
        if stride is not None and stride == 0:
            raise StepSpecError(f"{_STEPS} item {text!r}: the stride S in A:B:S must be positive")
        if stride is not None and start is None:
            raise StepSpecError(f"{_STEPS} item {text!r}: a stride needs a start (A:B:S)")
        return StepItem("range", text, start=start, stop=stop, stride=stride)
    raise StepSpecError(f"{_STEPS} {spec!r}: cannot parse {text!r}; {_GRAMMAR}")


def _select_item(item: StepItem, steps: list[int]) -> list[int]:
    """The steps (a subset of the sorted `steps`) that one item selects."""
    if item.kind == "step":
        if item.start in steps:
            return [item.start]
        raise StepSpecError(
            f"{_STEPS}: step {item.start} is not available; nearest: "
            f"{', '.join(map(str, _nearest(steps, item.start)))}"
        )
    if item.kind == "range":
        lo = steps[0] if item.start is None else item.start
        hi = steps[-1] if item.stop is None else item.stop
        picked = [s for s in steps if lo <= s <= hi]
        if item.stride is not None:
            picked = [s for s in picked if (s - lo) % item.stride == 0]
        if not picked:
            raise StepSpecError(
                f"{_STEPS} item {item.text!r} selects no available step "
                f"(available: {_summary(steps)})"
            )
        return picked
    return _spread(steps, item.count, log=item.kind == "log")


def _spread(steps: list[int], count: int, *, log: bool) -> list[int]:
    """`count` distinct steps spread evenly (in step or log(1+step)), ends included."""
    if count >= len(steps):
        return list(steps)
    if count == 1:
        raise StepSpecError(
            f"{_STEPS} {'log' if log else 'lin'}:1 cannot include both the first and the last "
            "step; use N >= 2 or name the step"
        )
    coords = [math.log1p(s) if log else float(s) for s in steps]
    lo, hi = coords[0], coords[-1]
    chosen = {0, len(steps) - 1}
    # Interior targets are filled in order of position; each takes the nearest step not yet
    # taken, so the result has exactly `count` steps even where available steps cluster.
    for i in range(1, count - 1):
        target = lo + (hi - lo) * i / (count - 1)
        chosen.add(_nearest_free(coords, target, chosen))
    return [steps[i] for i in sorted(chosen)]


def _nearest_free(coords: list[float], target: float, taken: set[int]) -> int:
    """Index of the coordinate nearest `target` that is not in `taken` (ties: lower)."""
    right = bisect.bisect_left(coords, target)
    left = right - 1
    while True:
        while left >= 0 and left in taken:
            left -= 1
        while right < len(coords) and right in taken:
            right += 1
        if left < 0:
            return right
        if right >= len(coords):
            return left
        return left if target - coords[left] <= coords[right] - target else right


def _nearest(steps: list[int], value: int, k: int = 3) -> list[int]:
    """Up to `k` available steps closest to `value`, in ascending order."""
    return sorted(sorted(steps, key=lambda s: (abs(s - value), s))[:k])


def _summary(steps: list[int]) -> str:
    """A short description of the available steps for an error message."""
    if len(steps) <= 6:
        return ", ".join(map(str, steps))
    head = ", ".join(map(str, steps[:3]))
    return f"{len(steps)} steps from {steps[0]} to {steps[-1]} ({head}, …)"
