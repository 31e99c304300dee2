"""Each connection's internals from the probes' records (correlator/conn_internals.py).

Hand-made records (the probes' fields, as probes/events.h lays them out) for
two incarnations of one 4-tuple and a SYN-ACK retransmitted before its
connection's first transition: the expected figures are worked out by hand
below, not by the code under test. The end-to-end figures from real probes
are in tests/test_internals_runs.py.
"""

from __future__ import annotations

import errno
import socket

import numpy as np
import polars as pl

from bus.internals import SOCK_EVENTS
from correlator.conn_internals import per_connection

A, B = "198.18.0.1", "198.18.0.2"
ADDR = [
    ("family", "<u2"),
    ("sport", "<u2"),
    ("dport", "<u2"),
    ("saddr", "u1", 16),
    ("daddr", "u1", 16),
]
SAMPLE = np.dtype([("ts", "<u8"), ("snd_cwnd", "<u4"), ("snd_wnd", "<u4"), ("hits", "<u4"), *ADDR])
EVENT = np.dtype([("ts", "<u8"), ("what", "u1"), ("code", "<i4"), ("segs", "<u2"), *ADDR])
S = 1_000_000_000


def _addr(text: str) -> np.ndarray:
    out = np.zeros(16, np.uint8)
    out[:4] = np.frombuffer(socket.inet_aton(text), np.uint8)
    return out


def _records(dtype: np.dtype, rows: list[tuple[object, ...]]) -> np.ndarray:
    out = np.zeros(len(rows), dtype)
    for i, (*fields, (sa, sp, da, dp)) in enumerate(rows):
        names = [
            n for n in dtype.names or () if n not in ("family", "sport", "dport", "saddr", "daddr")
        ]
        for n, v in zip(names, fields, strict=True):
            out[i][n] = v
        out[i]["family"] = socket.AF_INET
        out[i]["sport"], out[i]["dport"] = sp, dp
        out[i]["saddr"], out[i]["daddr"] = _addr(sa), _addr(da)
    return out


CLIENT = (A, 40000, B, 9415)
SERVER = (B, 9415, A, 40000)
EV = {name: i for i, name in enumerate(SOCK_EVENTS)}


def test_records_go_to_their_incarnation() -> None:
    conns = pl.DataFrame(
        {
            "id": [1, 2, 3],
            "laddr": [A, A, B],
            "lport": [40000, 40000, 9415],
            "raddr": [B, B, A],
            "rport": [9415, 9415, 40000],
            # The 4-tuple is used twice (ids 1 and 2); the server's end (3)
            # starts at 1.5 s, after its SYN-ACK was sent again.
            "start_ns": [0, 10 * S, int(1.5 * S)],
        }
    )
    samples = _records(
        SAMPLE,
        [
            # id 1: cwnd 10 -> 4 -> 7; window 0 from 2 s to 3.5 s, 3 hits while
            # closed, the one that reopened it included.
            (1 * S, 10, 65535, 1, CLIENT),
            (2 * S, 4, 0, 5, CLIENT),
            (3 * S, 4, 0, 2, CLIENT),
            (int(3.5 * S), 7, 1000, 2, CLIENT),
            # id 2: one sample.
            (11 * S, 20, 5000, 1, CLIENT),
        ],
    )
    events = _records(
        EVENT,
        [
            (int(2.5 * S), EV["retransmit"], 0, 1, CLIENT),
            (int(2.6 * S), EV["retransmit"], 1, 3, CLIENT),  # qdisc drop: counted, 3 segments
            (int(2.7 * S), EV["retransmit"], -errno.EBUSY, 2, CLIENT),  # given up: not counted
            (int(2.8 * S), EV["cong_state"], 3, 0, CLIENT),
            (int(2.9 * S), EV["cong_state"], 0, 0, CLIENT),
            (12 * S, EV["send_reset"], 0, 0, CLIENT),
            (12 * S + 1, EV["sk_error"], errno.ECONNRESET, 0, CLIENT),
            (1 * S, EV["retransmit_synack"], 0, 1, SERVER),  # before id 3 starts
            (2 * S, EV["receive_reset"], 0, 0, SERVER),
        ],
    )
    got = {r["id"]: r for r in per_connection(samples, events, conns).iter_rows(named=True)}
    assert sorted(got) == [1, 2, 3]
    one, two, three = got[1], got[2], got[3]
    assert (one["retransmits"], one["cong_changes"]) == (4, 2)
    assert (one["cwnd_min"], one["cwnd_max"]) == (4, 10)
    assert one["zero_window_s"] == 1.5
    assert one["zero_window_probes"] == 3  # hits 2 and 2 after it closed, less the reopening one
    assert (one["resets_sent"], one["error"]) == (0, None)
    assert (two["retransmits"], two["cwnd_min"], two["zero_window_s"]) == (0, 20, 0.0)
    assert (two["resets_sent"], two["error"]) == (1, "ECONNRESET")
    assert (three["retransmits"], three["resets_received"], three["cwnd_min"]) == (1, 1, None)
