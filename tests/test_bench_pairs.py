"""bench.pairs' pairs and spread: the rules that decide what a row reports.

Pure logic, no timing: the arms are scripted figures, so each case knows
its answer from the figures it feeds in, not from the implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bench.pairs import Row, paired, paired_ratios, steady


def script(figures: list[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(figures)
    return lambda: next(it)


def test_steady_is_plus_minus_ten_percent_of_the_median() -> None:
    assert steady([1.0, 1.09, 0.91])
    assert not steady([1.0, 1.12, 1.0])
    assert not steady([1.0, 0.88, 1.0])
    assert not steady([])


def test_agreeing_pairs_need_no_more() -> None:
    runs = paired(script([10, 10, 10]), script([10, 10, 10]), pairs=3, extra=5)
    assert runs.value == [10, 10, 10] and runs.peer == [10, 10, 10]
    assert runs.ratios == [1.0, 1.0, 1.0]


def test_a_wide_window_gets_more_pairs_until_the_last_ones_agree() -> None:
    # ratios 2.0, 1.0, 1.0 are wide; a fourth pair at 1.0 leaves 1.0, 1.0, 1.0.
    runs = paired(script([20, 10, 10, 10]), script([10] * 4), pairs=3, extra=5)
    assert len(runs.value) == 4
    assert runs.ratios == [1.0, 1.0, 1.0]
    row = runs.row("k", "S", "m", "u", "peer", ("a", "b")).judge()
    assert row.ratio == 1.0 and not row.noisy
    assert row.pairs_run == 4 and row.runs == {"a": [20, 10, 10, 10], "b": [10] * 4}


def test_extra_pairs_are_bounded_and_the_row_says_noisy() -> None:
    value = script([10, 20, 10, 20, 10, 20])  # every other pair is 2x: never steady
    runs = paired(value, script([10] * 6), pairs=2, extra=3)
    assert len(runs.value) == 5
    row = runs.row("k", "S", "m", "u", "peer", ("a", "b")).judge()
    assert row.noisy
    assert row.spread == (1.0, 2.0)


def test_arms_alternate_who_goes_first() -> None:
    order: list[str] = []

    def arm(name: str) -> Callable[[], float]:
        def run() -> float:
            order.append(name)
            return 1.0

        return run

    paired(arm("v"), arm("p"), pairs=3, extra=0)
    assert order == ["v", "p", "p", "v", "v", "p"]


def test_rows_from_other_sections_pair_their_runs_by_index() -> None:
    assert paired_ratios({"bus": [4.0, 6.0], "raw": [8.0, 6.0]}) == [0.5, 1.0]
    assert paired_ratios({"only": [1.0]}) == []
    assert paired_ratios({"a": [1.0, 2.0], "b": [1.0]}) == []
    row = Row("k", "S", "m", 5.0, "u", 7.0, runs={"bus": [4.0, 6.0], "raw": [8.0, 6.0]}).judge()
    assert row.ratio == pytest.approx(0.75) and row.noisy and row.spread == (0.5, 1.0)


def test_a_goal_is_met_by_its_alternative_only_when_the_row_says_so() -> None:
    """loss_onset: ">= 2.0" of the bomber's rate, or no loss at the most the
    machine generated; without the alternative, 0.8 misses the goal."""
    plain = Row("k", "s", "m", 80.0, "events/s", 100.0, goal=">= 2.0").judge()
    alt = Row(
        "k", "s", "m", 80.0, "events/s", 100.0, goal=">= 2.0", met_by="no loss at the most"
    ).judge()
    assert (0.8, False) == (plain.ratio, plain.met)
    assert (0.8, True) == (alt.ratio, alt.met)
