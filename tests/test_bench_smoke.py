"""`python -m bench --tiny`: the runner produces every row with real numbers.

Not a performance test: the figures are not compared with their goals here
(timings never decide a test); only that each measurement ran and the
table, JSON and markdown hold all of it.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from lab_helpers import ROOT

from bench.goals import DOC, GOAL_ROWS

ROWS = [
    "conn_rate",
    "conn_rate_cpu",
    "probe_overhead",
    "probe_overhead_cpu",
    "lab_overhead",
    "lab_records",
    "lab_cpu",
    "loss_onset",
    "loss_full_speed",
    "bus_capacity",
    "bus_vs_bomber",
    "correlator_rate",
    "correlator_replay",
    "correlator_10m_time",
    "correlator_10m_rss",
    "correlator_peak_rss",
    "c10k_held",
    "c10k_rss",
    "c10k_threads",
    "mux_scale_1",
    "mux_scale_2",
    "correlator_scale_1",
    "correlator_scale_2",
    "correlator_held_kb",
    "snapshot_vs_ss",
    "snapshot_vs_pyroute2",
    "snapshot_ms",
    "fdio_bulk",
    "fdio_bomber",
    "internals_cpu",
    "internals_throughput",
    "internals_probe_cpu",
    "internals_sampling",
]


def finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.netns
@pytest.mark.timeout(600)
def test_tiny_bench_has_every_row_with_numbers(tmp_path: Path) -> None:
    """Every row is there, measured, with a finite value, peer and ratio."""
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    rows = {r["key"]: r for r in data["rows"]}
    assert ROWS == [k for k in ROWS if k in rows], f"missing rows: {set(ROWS) - set(rows)}"
    for key in ROWS:
        r = rows[key]
        assert finite(r["value"]), f"{key}: {r['note']}"
        assert finite(r["peer"]) and finite(r["ratio"]), f"{key}: {r}"
        assert r["met"] in (True, False, None)
        # Paired rows carry the ratios their ratio is the median of.
        if r["ratios"]:
            assert r["ratio"] == pytest.approx(statistics.median(r["ratios"]))
            assert r["pairs_run"] >= len(r["ratios"])
    # Issue 11's goals: each a row with its goal and a verdict; a miss says why.
    for key in GOAL_ROWS:
        r = rows[key]
        assert r["goal"] != "—" and r["met"] in (True, False), f"{key}: {r}"
        assert r["met"] or DOC in r["note"], f"{key} missed with no cause: {r['note']}"
    paired_rows = ("conn_rate", "probe_overhead", "lab_overhead", "lab_records", "lab_cpu")
    for key in (*paired_rows, "fdio_bulk"):
        assert rows[key]["ratios"], f"{key} is not a paired row"
    assert {"nproc", "kernel", "cpu"} <= set(data["machine"])
    md = (tmp_path / "latest.md").read_text()
    assert all(rows[k]["measure"].replace("|", "/") in md for k in ROWS)
    assert "goals missed or not measured" in out.stdout
    assert "spread (pairs)" in md and "SCHED_IDLE" in md
