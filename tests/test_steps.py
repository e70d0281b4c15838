"""The --steps grammar (docs/runs.md#steps-grammar): values are training steps, never indices."""

from __future__ import annotations

import math

import pytest

from specdyn.errors import StepSpecError
from specdyn.steps import StepItem, parse_steps, select_steps

# Pythia's revision steps: 0, 1, 2, 4, …, 512, then every 1000 up to 143000.
PYTHIA = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))
EVERY_500 = list(range(0, 10001, 500))


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, EVERY_500),
        ("", EVERY_500),
        ("  ", EVERY_500),
        ("0,1000,5000", [0, 1000, 5000]),
        ("5000, 0 ,1000", [0, 1000, 5000]),
        ("1000,1000", [1000]),
        ("1000:3000", [1000, 1500, 2000, 2500, 3000]),
        ("1000:3000:1000", [1000, 2000, 3000]),
        ("0:10000:3000", [0, 3000, 6000, 9000]),  # B off the grid: not included
        ("0:2200:1000", [0, 1000, 2000]),
        ("250:1250:250", [500, 1000]),  # grid values that are not available are left out
        ("9000:", [9000, 9500, 10000]),
        (":1000", [0, 500, 1000]),
        ("lin:3", [0, 5000, 10000]),
        ("lin:5", [0, 2500, 5000, 7500, 10000]),
        ("lin:100", EVERY_500),  # N ≥ available → all
        ("lin:21", EVERY_500),
        ("0,lin:2", [0, 10000]),
        ("0:1000,9500:10000", [0, 500, 1000, 9500, 10000]),
        ("LIN:3", [0, 5000, 10000]),
    ],
)
def test_select_steps_table(spec, expected):
    assert select_steps(EVERY_500, spec) == expected


def test_unsorted_and_repeated_available_steps():
    assert select_steps([30, 10, 20, 10], "10:20") == [10, 20]
    assert select_steps([30, 10, 20, 10], None) == [10, 20, 30]


def test_lin_counts_and_ends_on_irregular_steps():
    for n in range(2, 40):
        chosen = select_steps(PYTHIA, f"lin:{n}")
        assert len(chosen) == n and len(set(chosen)) == n
        assert chosen[0] == 0 and chosen[-1] == 143000
        assert set(chosen) <= set(PYTHIA)


def test_log_spreads_evenly_in_log1p():
    chosen = select_steps(PYTHIA, "log:8")
    assert len(chosen) == 8 and chosen[0] == 0 and chosen[-1] == 143000
    # each pick is the available step nearest its log1p target (independent brute force)
    hi = math.log1p(143000)
    for i, step in enumerate(chosen[1:-1], start=1):
        target = hi * i / 7
        best = min(PYTHIA, key=lambda s: abs(math.log1p(s) - target))
        assert step == best
    # the early, log-spaced revisions are represented, unlike with lin
    assert sum(s < 1000 for s in chosen) >= 4
    assert sum(s < 1000 for s in select_steps(PYTHIA, "lin:8")) == 1


def test_spread_never_repeats_where_steps_cluster():
    steps = [0, 1, 2, 3, 4, 1000]
    chosen = select_steps(steps, "lin:5")
    # targets 250, 500, 750 each take the nearest step not yet taken: 4, 3, then 2
    assert chosen == [0, 2, 3, 4, 1000]
    assert select_steps(steps, "log:6") == steps


def test_parse_steps_items():
    spec = parse_steps("0, 10:50:5, log:4")
    assert spec.items == (
        StepItem("step", "0", start=0),
        StepItem("range", "10:50:5", start=10, stop=50, stride=5),
        StepItem("log", "log:4", count=4),
    )
    assert spec.select(range(0, 101, 5)) == sorted({0, 10, 15, 20, 25, 30, 35, 40, 45, 50} | set(
        select_steps(range(0, 101, 5), "log:4")))
    assert parse_steps(None).items == ()


def test_missing_step_lists_nearest():
    with pytest.raises(StepSpecError) as err:
        select_steps(EVERY_500, "0,1200")
    msg = str(err.value)
    assert "1200" in msg and "1000" in msg and "1500" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("abc", "cannot parse"),
        ("1,,2", "empty item"),
        ("3000:1000", "after end"),
        ("0:1000:0", "positive"),
        ("lin:0", "at least 1"),
        ("log:1", "N >= 2"),
        ("-5", "cannot parse"),
        ("1.5", "cannot parse"),
        ("20000:30000", "selects no available step"),
        ("lin:x", "cannot parse"),
    ],
)
def test_bad_specs(spec, fragment):
    with pytest.raises(StepSpecError) as err:
        select_steps(EVERY_500, spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_spec_on_a_run_without_steps():
    assert select_steps([], None) == []
    with pytest.raises(StepSpecError):
        select_steps([], "lin:3")


def test_single_available_step():
    assert select_steps([7], "lin:1") == [7]
    assert select_steps([7], "log:5") == [7]
