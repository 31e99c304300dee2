"""Issue 11's goals in the bench table: the rows that judge them and, for a
row that misses its goal, the cause in a line, from figures the same run
measured where it has them, with a pointer to docs/bench.md, where each
cause is written out with its figures.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.pairs import Row

# The rows that judge issue 11's goals, in the issue's order: each has a
# goal, and a `met` once measured (tests/test_bench_smoke.py checks both).
GOAL_ROWS = (
    "loss_onset",
    "probe_overhead",
    "lab_overhead",
    "correlator_rate",
    "correlator_replay",
    "correlator_held_kb",
    "correlator_10m_time",
    "correlator_10m_rss",
)

DOC = "docs/bench.md, 'Issue 11: why a goal is missed'"

Rows = dict[str, Row]


def _cpu_pair(rows: Rows, key: str, what: str) -> str:
    """A CPU row's peer and value: "<what> 31.1 -> 34.4 µs per connection"."""
    r = rows.get(key)
    if r is None or r.value is None or r.peer is None:
        return ""
    return f"{what} {r.peer:.1f} -> {r.value:.1f} µs per connection (same pairs, {key})"


def _probes(r: Row, rows: Rows) -> str:
    cpu = _cpu_pair(rows, "probe_overhead_cpu", "the bomber's own CPU without -> with probes")
    return (
        f"{cpu}: the tracepoints run inside the bomber's own connect()/close(); "
        "on 2 shared cores the rate follows the neighbours"
    )


def _lab(r: Row, rows: Rows) -> str:
    cpu = _cpu_pair(rows, "lab_cpu", "CPU alone -> whole lab")
    records = rows.get("lab_records")
    left = ""
    if records is not None and records.ratio is not None:
        left = f"; without the actors' records the lab runs at {records.ratio:.2f} of alone"
    return (
        f"{cpu}: on 2 cores the lab's extra work (orchestrator, probes, the actors' records) "
        f"shares the cores with the bomber{left}"
    )


def _loss(r: Row, rows: Rows) -> str:
    if "refused with space" in r.note:
        # Measured in docs/probes.md ("What the refusals are"): immediate
        # EAGAINs from the ring's lock with the ring nearly empty.
        return (
            "the kernel refused ring submissions with the ring nearly empty, past emit()'s "
            "retries: the 6.15+ ring buffer lock (an rqspinlock) gives up on this VM's "
            "shared vCPUs; not the reader (its share of a core is in the note)"
        )
    return "a ring filled: the probe process's reader fell behind (its CPU is in the note)"


def _rate(r: Row, rows: Rows) -> str:
    return (
        "the cost is per connection (each life's work in Python and polars' fixed cost "
        "per call), not per event: the profile is in docs/bench.md"
    )


def _vs_read(r: Row, rows: Rows) -> str:
    return (
        "reading decodes whole batches as numpy views; correlating does the per-life "
        "work of the row above"
    )


def _held(r: Row, rows: Rows) -> str:
    return (
        "each open life is Python objects (a Conn, its tuple, times and indexes: ~1 KB, "
        "two lives per held connection) beside ~150 MB of polars, numpy and the reorder "
        "window whatever is held"
    )


def _big_time(r: Row, rows: Rows) -> str:
    if r.incomplete:
        return "not finished in the bench's time budget (the note says how far it got)"
    return "the 100k replay's cost per connection, held over 10M events: see correlator_rate"


def _big_rss(r: Row, rows: Rows) -> str:
    if r.incomplete:
        return "not finished in the bench's time budget"
    return "memory grew past the goal: see correlator_peak_rss, whether it stayed flat"


CAUSES: dict[str, Callable[[Row, Rows], str]] = {
    "loss_onset": _loss,
    "probe_overhead": _probes,
    "lab_overhead": _lab,
    "correlator_rate": _rate,
    "correlator_replay": _vs_read,
    "correlator_held_kb": _held,
    "correlator_10m_time": _big_time,
    "correlator_10m_rss": _big_rss,
}


def explain(rows: list[Row]) -> None:
    """Add to each judged row of GOAL_ROWS that misses its goal the cause of
    the miss and where docs/bench.md writes it out."""
    by_key = {r.key: r for r in rows}
    for r in rows:
        if r.key in CAUSES and r.met is False and r.value is not None:
            cause = CAUSES[r.key](r, by_key)
            r.note = f"{r.note}; MISSED, cause: {cause} ({DOC})".lstrip("; ")
