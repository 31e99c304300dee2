"""bench.goals: issue 11's goal rows and the cause a missed one carries.

Pure logic, no timing: the rows are built here with scripted figures, so
each case knows its answer from the figures it feeds in.
"""

from __future__ import annotations

import re
from typing import Any

from lab_helpers import ROOT

from bench.goals import CAUSES, DOC, GOAL_ROWS, explain
from bench.pairs import Row, failed_row
from bench.table import goals_line


def goal_row(key: str, value: float, goal: str, on: str = "value", **kw: Any) -> Row:
    return Row(key, "S", "m", value, "u", 1.0, "peer", goal=goal, goal_on=on, **kw).judge()


def test_strict_goals_are_judged_strictly() -> None:
    assert goal_row("correlator_10m_time", 14.9, "< 15").met is True
    assert goal_row("correlator_10m_time", 15.0, "< 15").met is False
    assert goal_row("x", 2.0, "> 1").met is True and goal_row("x", 1.0, "> 1").met is False
    assert goal_row("x", 1.0, "<= 1.0").met is True and goal_row("x", 1.01, "<= 1.0").met is False


def test_a_row_measured_only_part_of_the_way_misses_its_goal() -> None:
    assert goal_row("correlator_10m_time", 3.0, "< 15", incomplete=True).met is False


def test_every_goal_row_has_a_cause() -> None:
    assert set(CAUSES) == set(GOAL_ROWS)


def test_the_pointer_names_a_section_of_docs_bench_md() -> None:
    title = re.search(r"'(.+)'", DOC)
    assert title and DOC.startswith("docs/bench.md")
    headings = [
        line.lstrip("#").strip()
        for line in (ROOT / "docs" / "bench.md").read_text().splitlines()
        if line.startswith("#")
    ]
    assert title.group(1) in headings


def test_a_missed_goal_row_gets_its_cause_and_the_pointer() -> None:
    missed = goal_row("correlator_held_kb", 5.9, "<= 1.0", note="RSS growth 590 MB")
    met = goal_row("correlator_10m_rss", 300.0, "< 1024", note="base 60 MB")
    other = goal_row("snapshot_ms", 200.0, "<= 100", note="")
    explain([missed, met, other])
    assert missed.note.startswith("RSS growth 590 MB; MISSED, cause: ")
    assert missed.note.endswith(f"({DOC})")
    assert met.note == "base 60 MB"
    assert other.note == "", "rows outside issue 11's goals keep their note"


def test_the_lab_cause_quotes_the_cpu_the_same_run_measured() -> None:
    lab = goal_row("lab_overhead", 0.8, ">= 0.90", on="ratio", ratio=0.8)
    cpu = Row("lab_cpu", "S", "m", 97.4, "µs CPU/conn", 56.7, "alone").judge()
    records = Row("lab_records", "S", "m", 1.0, "conn/s", 1.0, "alone", ratio=0.97).judge()
    explain([lab, cpu, records])
    assert "56.7 -> 97.4 µs per connection" in lab.note
    assert "0.97 of alone" in lab.note


def test_a_row_that_could_not_be_measured_gets_no_cause() -> None:
    row = failed_row("correlator_rate", "S", "m", "events/s", "value >= 1000000", "boom")
    row.judge()
    explain([row])
    assert row.goal == ">= 1000000" and row.goal_on == "value"
    assert row.met is None and row.note == "not measured: boom"


def test_the_goals_line_counts_met_and_missed_goal_rows_only() -> None:
    rows = [
        goal_row("correlator_10m_rss", 300.0, "< 1024"),
        goal_row("correlator_held_kb", 5.0, "<= 1.0"),
        goal_row("snapshot_ms", 50.0, "<= 100"),
    ]
    line = goals_line(rows)
    assert line.startswith(f"Issue 11's goals: 1 of {len(GOAL_ROWS)} met (correlator_10m_rss)")
    missed = line.split("missed or not measured: ")[1]
    assert "correlator_held_kb" in missed and "loss_onset" in missed
    assert "snapshot_ms" not in line and "correlator_10m_rss" not in missed


def test_the_loss_cause_follows_the_kind_of_loss_the_note_names() -> None:
    refused = goal_row("loss_onset", 0.5, ">= 2.0", on="ratio", ratio=0.5)
    refused.note = "losses begin above 98,634 events/s (9 dropped; refused with space in the ring)"
    full = goal_row("loss_onset", 0.5, ">= 2.0", on="ratio", ratio=0.5)
    full.note = "losses begin above 98,634 events/s (the ring of tcp_state filled)"
    explain([refused])
    explain([full])
    assert "rqspinlock" in refused.note and "reader fell behind" not in refused.note
    assert "reader fell behind" in full.note and "rqspinlock" not in full.note
