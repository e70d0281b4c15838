"""The loss barrier along the straight line between two endpoints (paper Eq. 6;
docs/compare.md#loss-barrier)."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CompareError, SpecdynError, option_ref
from ..sources import open_checkpoint

__all__ = ["BarrierOptions", "BarrierResult", "barrier_between", "barrier_value", "load_evaluator"]

StateDict = dict[str, torch.Tensor]

# How a message names the evaluator: load_evaluator's spec (Python) or --eval.
_EVAL = option_ref("spec", "--eval")


@dataclass(frozen=True)
class BarrierOptions:
    """How to measure the barrier.

    evaluate: the user's loss of a state dict, ``evaluate(state_dict) -> float``. The
    state dict holds every tensor of the checkpoint under its raw key (as stored,
    e.g. with Lightning's ``model.`` prefix); floating tensors are interpolated, the
    others (e.g. ``num_batches_tracked``) taken from the first endpoint. Anything
    the interpolated model needs besides its weights, such as recomputed
    batch-norm statistics, is the function's business.
    points: evaluation points α = 0, 1/(points−1), …, 1 (the paper uses 11).
    label: how the evaluator was named (``module:function``), for the record.
    """

    evaluate: Callable[[StateDict], float]
    points: int = 11
    label: str = ""


@dataclass
class BarrierResult:
    """The losses along the line between two endpoints and their barrier.

    pair: (a, b) run indices; alpha: float64 [P]; loss: float64 [P] the evaluator's
    loss of (1−α)·W_a + α·W_b; barrier: max over α of loss(α) − ((1−α)·loss(0) +
    α·loss(1)), ≥ 0 up to rounding (0 at the endpoints themselves).
    """

    pair: tuple[int, int]
    alpha: np.ndarray
    loss: np.ndarray
    barrier: float


def barrier_value(alpha: np.ndarray, loss: np.ndarray) -> float:
    """Eq. 6 from losses at points `alpha` (float64 [P], 0 and 1 included)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    line = (1.0 - alpha) * loss[0] + alpha * loss[-1]
    return float(np.max(loss - line))


def load_evaluator(spec: str) -> Callable[[StateDict], float]:
    """The function named by ``module:function`` or ``path/to/file.py:function``.

    Raises:
        CompareError: the spec has no ``:``, the module or file cannot be imported
            (the import error is named), or the attribute is missing or not callable.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise CompareError(
            f"{_EVAL} {spec!r}: write module:function or path/to/file.py:function", option="spec"
        )
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).expanduser()
            if not path.is_file():
                raise CompareError(
                    f"{_EVAL} {spec!r}: no such file {path}", file=path, option="spec"
                )
            module_spec = importlib.util.spec_from_file_location(f"_specdyn_eval_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except SpecdynError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module: report it in one line
        raise CompareError(
            f"{_EVAL} {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}",
            option="spec",
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CompareError(f"{_EVAL} {spec!r}: {target} has no function {attr!r}", option="spec")
    return fn


def _state_dict(path: Path) -> StateDict:
    """Every tensor of one checkpoint, by raw key."""
    with open_checkpoint(path).open() as reader:
        return {key: reader.get(key) for key in reader.keys()}


def barrier_between(
    path_a: Path, path_b: Path, options: BarrierOptions, *, pair: tuple[int, int] = (0, 1)
) -> BarrierResult:
    """Evaluate the loss along (1−α)·W_a + α·W_b and return the barrier (Eq. 6).

    Args:
        path_a, path_b: the two endpoint checkpoints (any format specdyn reads).
        options: the evaluator and the number of points.
        pair: run indices recorded in the result.

    Raises:
        CompareError: the checkpoints hold different tensors (names, shapes), the
            evaluator raises or returns something that is not a number.
    """
    if options.points < 3:
        raise CompareError(
            f"{option_ref('barrier.points', '--barrier-points')} must be at least 3 "
            "(the endpoints and one between)",
            option="barrier.points",
        )
    a, b = _state_dict(path_a), _state_dict(path_b)
    if a.keys() != b.keys():
        only = sorted(set(a) ^ set(b))
        raise CompareError(
            f"{path_a} and {path_b} hold different tensors (e.g. {only[0]}); "
            "the barrier needs two states of one model"
        )
    for key in a:
        if a[key].shape != b[key].shape:
            raise CompareError(
                f"{key}: shape {tuple(a[key].shape)} in {path_a} but {tuple(b[key].shape)} in "
                f"{path_b}; the barrier needs two states of one model"
            )
    alpha = np.linspace(0.0, 1.0, options.points)
    losses = np.empty(options.points)
    for i, t in enumerate(alpha):
        mixed = {
            key: (torch.lerp(a[key].double(), b[key].double(), float(t)).to(a[key].dtype))
            if a[key].is_floating_point()
            else a[key].clone()
            for key in a
        }
        losses[i] = _call(options, mixed, t)
    return BarrierResult(pair=pair, alpha=alpha, loss=losses, barrier=barrier_value(alpha, losses))


def _call(options: BarrierOptions, state: StateDict, alpha: float) -> float:
    """The evaluator's loss at one point, as a float (one-line error otherwise)."""
    name = options.label or getattr(options.evaluate, "__name__", "the evaluator")
    try:
        value = options.evaluate(state)
    except Exception as exc:  # noqa: BLE001 - the user's function: one line, not a traceback
        raise CompareError(
            f"{name} failed at alpha={alpha:.2f}: {type(exc).__name__}: {exc}"
        ) from None
    try:
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise CompareError(
            f"{name} returned {type(value).__name__}, not a number (a loss)"
        ) from None
    if math.isnan(number):
        return math.nan
    return number
