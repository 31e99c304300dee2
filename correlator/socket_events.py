"""The sockets' discrete events: retransmits, congestion states, resets, errors.

Each event (probes/tcp_events.bpf.c) becomes a row of the series file and
adds to its socket's figures; the retransmits between the two readings of
the hosts' counters (correlator/tcp_counters.py) are counted apart, to be
held against the kernel's RetransSegs, with those the sockets' own counters
show that no hit reported.
"""

from __future__ import annotations

import errno
from typing import Any

import numpy as np

from bus.internals import CONG_STATES, SOCK_EVENTS
from correlator.socket_figures import SocketFigures, socket_keys


def event_rows(
    events: np.ndarray,
    t0: int,
    window: tuple[int, int] | None,
    figures: dict[str, SocketFigures],
) -> tuple[list[dict[str, Any]], int, int, int]:
    """The events' rows in time order, and in the window: the retransmitted
    segments seen, those the qdisc refused, and those unseen."""
    rows: list[dict[str, Any]] = []
    in_window = refused_in_window = 0
    # Per socket, in the window: the readings of its own retransmit
    # counter at its hits, and the segments those hits counted.
    readings: dict[str, list[tuple[int, int]]] = {}
    keys = socket_keys(events)
    segs = _segs(events)
    totals = _total_retrans(events)
    order = np.argsort(events["ts"], kind="stable")
    for i in order.tolist():
        e, key = events[i], keys[i]
        f = figures.setdefault(key, SocketFigures(key))
        n = int(e["what"])
        what = SOCK_EVENTS[n] if n < len(SOCK_EVENTS) else str(n)
        t = (int(e["ts"]) - t0) / 1e9
        code = int(e["code"])
        if totals[i] and window and window[0] <= int(e["ts"]) <= window[1]:
            # A retransmit hit's own segments are in its reading,
            # unless it gave up before the count (code < 0).
            own = int(segs[i]) if what == "retransmit" and code >= 0 else 0
            readings.setdefault(key, []).append((totals[i], own))
        row: dict[str, Any] = {"socket": key, "t_s": round(t, 6), "event": what}
        if what == "retransmit" and code < 0:
            # 6.x (`err`, the tracepoint fires on every return of
            # __tcp_retransmit_skb): mostly given up before the count
            # (no memory, still queued from the last time: not in Tcp
            # RetransSegs); an error of the transmit itself comes
            # after the count and is in TcpExt TCPRetransFail too.
            f.retrans_given_up += 1
            row["error"] = errno.errorcode.get(-code, str(code))
        elif what in ("retransmit", "retransmit_synack"):
            # code > 0: the qdisc dropped it (NET_XMIT_DROP): counted
            # in RetransSegs, and in TCPRetransFail as never sent.
            # Counted in segments, as Tcp RetransSegs counts them.
            n_segs = int(segs[i])
            f.retransmits += n_segs
            if window and window[0] <= int(e["ts"]) <= window[1]:
                in_window += n_segs
                if code:
                    refused_in_window += n_segs
            if n_segs > 1:
                row["segs"] = n_segs
            if code:
                row["qdisc_drop"] = True
        elif what == "cong_state":
            name = CONG_STATES[code] if 0 <= code < len(CONG_STATES) else str(code)
            f.cong.append((t, name))
            row["cong_state"] = name
        elif what == "send_reset":
            f.resets_sent += 1
        elif what == "receive_reset":
            f.resets_received += 1
        elif what == "sk_error":
            name = errno.errorcode.get(code, str(code))
            f.errors[name] = f.errors.get(name, 0) + 1
            row["error"] = name
        rows.append(row)
    return rows, in_window, refused_in_window, _unseen(readings)


def _total_retrans(events: np.ndarray) -> list[int]:
    """The socket's own retransmit counter at each event (raw tracepoints);
    0 where the event has none (classic tracepoints, other hooks, older
    recordings)."""
    if "total_retrans" not in (events.dtype.names or ()):
        return [0] * len(events)
    return [int(v) for v in events["total_retrans"].tolist()]


def _unseen(readings: dict[str, list[tuple[int, int]]]) -> int:
    """Segments the sockets counted (tcp_sock.total_retrans, added to with
    Tcp RetransSegs) that none of their retransmit hits reported: per
    socket, what its counter moved between its first and last reading in
    the window, less the segments of the hits after the first (the first
    reading already holds its own hit's)."""
    return sum(
        values[-1][0] - values[0][0] - sum(own for _, own in values[1:])
        for values in readings.values()
    )


def _segs(events: np.ndarray) -> np.ndarray:
    """Segments per event: the skb's pcount (probes/tcp_events.bpf.c);
    1 in recordings made before the probe read it."""
    if "segs" not in (events.dtype.names or ()):
        return np.ones(len(events), np.int64)
    return np.maximum(events["segs"].astype(np.int64), 1)
