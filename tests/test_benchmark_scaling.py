"""benchmarks/refshapes_scaling.py's verdict: the smallest measured budget that reaches a goal."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def scaling(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("refshapes_scaling")


def row(multiple: int, miou: float) -> dict:
    return {"multiple": multiple, "by_kind": {"val": {"all": {"miou": miou}}}}


def test_the_smallest_budget_at_or_above_the_goal_is_named(scaling) -> None:
    # A plateau, then a step: 4x falls short, 8x and 16x reach 55; the goal itself counts as reached.
    rows = [row(16, 70.0), row(1, 34.3), row(4, 37.3), row(8, 55.0)]
    assert scaling.smallest_budget_reaching(rows, "val", 55.0) == 8
    assert scaling.smallest_budget_reaching(rows, "val", 30.0) == 1
    assert scaling.smallest_budget_reaching(rows, "val", 70.01) is None


def test_the_table_says_none_when_no_budget_reaches_a_goal(scaling) -> None:
    rows = [
        {
            "multiple": 1,
            "samples": 28_000,
            "seconds": None,
            "by_kind": {
                split: {
                    "all": {"miou": 30.0, "p@0.5": 10.0, "count": 5},
                    "position": {"miou": 20.0, "p@0.5": 0.0, "count": 5},
                }
                for split in scaling.SPLITS
            },
        }
    ]
    reached = {split: scaling.smallest_budget_reaching(rows, split, scaling.GOALS[split]) for split in scaling.SPLITS}
    table = scaling.markdown(rows, reached)
    assert "| 1x | 28,000 | reused | 30.00 | 30.00 | 30.00 | 10.0 | 20.0 |" in table
    assert "| val | 55 | none |" in table
