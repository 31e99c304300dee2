"""The retransmits a socket counted that no tracepoint hit reported
(correlator/socket_events.py, `retransmits_unseen_between_readings`).

Hand-made tcp_events records (the fields probes/events.h lays out) carrying
the socket's own counter (total_retrans) as the raw programs read it; the
expected figures are worked out by hand below, not by the code under test.
The real kernel's case is in tests/test_probe_internals_retransmits.py and
tests/test_internals_runs.py.
"""

from __future__ import annotations

import socket

import numpy as np

from bus.internals import SOCK_EVENTS
from correlator.internals import Internals

EVENT = np.dtype(
    [
        ("ts", "<u8"),
        ("what", "u1"),
        ("code", "<i4"),
        ("segs", "<u2"),
        ("total_retrans", "<u4"),
        ("family", "<u2"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("saddr", "u1", 16),
        ("daddr", "u1", 16),
    ]
)
EV = {name: i for i, name in enumerate(SOCK_EVENTS)}
EBUSY = -16


def _events(rows: list[tuple[int, str, int, int, int, int]]) -> np.ndarray:
    out = np.zeros(len(rows), EVENT)
    for i, (ts, what, code, segs, total, sport) in enumerate(rows):
        out[i]["ts"], out[i]["what"], out[i]["code"] = ts, EV[what], code
        out[i]["segs"], out[i]["total_retrans"] = segs, total
        out[i]["family"], out[i]["sport"], out[i]["dport"] = socket.AF_INET, sport, 9415
        out[i]["saddr"][:4] = np.frombuffer(socket.inet_aton("198.18.0.1"), np.uint8)
        out[i]["daddr"][:4] = np.frombuffer(socket.inet_aton("198.18.0.2"), np.uint8)
    return out


def _meta(retrans_segs: int) -> dict[str, object]:
    """One host whose counters were read at 5 and at 50 (CLOCK_MONOTONIC ns)."""
    start = {"Tcp.OutSegs": 0, "Tcp.RetransSegs": 0, "mono_ns": 5}
    end = {"Tcp.OutSegs": 1000, "Tcp.RetransSegs": retrans_segs, "mono_ns": 50}
    return {"lab": {"tcp_counters": {"a": {"start": start, "end": end}}}}


def test_counter_jumps_between_hits_are_unseen_retransmits() -> None:
    """Socket 40000 (raw programs): hits of 1 segment reading 1, 2, then 6
    (3 counted with no hit), one that gave up before the count (EBUSY: no
    segment of its own, reading 6), a congestion change reading 8 (2 more
    after the last hit); a hit after the end reading is not compared.
    Socket 40001 (classic programs: no reading) adds 2 seen, none unseen.
    RetransSegs: 3 + 5 + 2 = 10."""
    events = _events(
        [
            (10, "retransmit", 0, 1, 1, 40000),
            (20, "retransmit", 0, 1, 2, 40000),
            (30, "retransmit", 0, 1, 6, 40000),
            (35, "retransmit", EBUSY, 1, 6, 40000),
            (40, "cong_state", 0, 0, 8, 40000),
            (60, "retransmit", 0, 1, 9, 40000),
            (12, "retransmit", 0, 1, 0, 40001),
            (22, "retransmit", 0, 1, 0, 40001),
        ]
    )
    internals = Internals(0, _meta(10))
    internals.events.append(events)
    out = internals.finish()
    counts = out["counts"]["internals"]
    assert counts["retransmits_between_readings"] == 5
    assert counts["retransmits_unseen_between_readings"] == 5
    assert any("show 5 more that no tracepoint hit reported" in s for s in out["sentences"])


def test_no_reading_no_unseen() -> None:
    """The classic programs read no counter: nothing is unseen, however many
    the kernel counted."""
    events = _events([(10, "retransmit", 0, 1, 0, 40000), (20, "cong_state", 0, 0, 0, 40000)])
    internals = Internals(0, _meta(7))
    internals.events.append(events)
    counts = internals.finish()["counts"]["internals"]
    assert counts["retransmits_unseen_between_readings"] == 0
