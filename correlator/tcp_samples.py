"""A socket's tcp_probe samples: its series rows, figures and plot.

Zero window: a socket's window is closed from the sample where snd_wnd
(the sender's view) reaches 0 to the next where it is not 0. Probes: the
ACKs that socket received while its window was closed, which are the
peer's answers to its zero-window probes (each sample's `hits` counts the
tracepoint's hits since the socket's previous sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bus.internals import INFINITE_SSTHRESH, SAMPLE_WHY
from correlator.socket_figures import SocketFigures

# Samples per socket kept for the plots and trace counters (evenly thinned).
PLOT_POINTS = 600


def sample_rows(key: str, s: np.ndarray, t0: int) -> list[dict[str, Any]]:
    t = (s["ts"].astype(np.int64) - t0) / 1e9
    in_flight = (s["snd_nxt"] - s["snd_una"]).astype(np.uint32)
    why = [SAMPLE_WHY[w] if w < len(SAMPLE_WHY) else str(w) for w in s["why"].tolist()]
    cols = zip(
        t.round(6).tolist(),
        s["snd_cwnd"].tolist(),
        s["ssthresh"].tolist(),
        s["srtt_us"].tolist(),
        s["snd_wnd"].tolist(),
        s["rcv_wnd"].tolist(),
        in_flight.tolist(),
        s["hits"].tolist(),
        why,
        strict=True,
    )
    names = ("t_s", "cwnd", "ssthresh", "srtt_us", "snd_wnd", "rcv_wnd", "in_flight", "hits")
    out = []
    for row in cols:
        d = {"socket": key, **dict(zip(names, row[:8], strict=True)), "why": row[8]}
        if d["ssthresh"] >= INFINITE_SSTHRESH:
            d["ssthresh"] = None
        out.append(d)
    return out


def series(f: SocketFigures, s: np.ndarray, t0: int) -> None:
    ts = s["ts"].astype(np.int64)
    f.samples = len(s)
    f.hits = int(s["hits"].sum())
    cwnd = s["snd_cwnd"].astype(np.int64)
    f.cwnd_max = int(cwnd.max())
    if len(cwnd) > 1:
        drops = cwnd[:-1] - cwnd[1:]
        i = int(np.argmax(drops))
        if drops[i] > 0:
            f.cwnd_drop = (int(cwnd[i]), int(cwnd[i + 1]), (int(ts[i + 1]) - t0) / 1e9)
    una = s["snd_una"].astype(np.uint32)
    f.bytes_acked = int(((una[1:] - una[:-1]).astype(np.uint32)).astype(np.int64).sum())
    f.seconds = (int(ts[-1]) - int(ts[0])) / 1e9
    f.zero_periods, f.zero_closed_s, f.zero_probes = _closed(ts, s["snd_wnd"], s["hits"])
    _, f.rcv_zero_closed_s, _ = _closed(ts, s["rcv_wnd"], s["hits"])


def plot(key: str, s: np.ndarray, t0: int) -> dict[str, Any]:
    step = max(1, len(s) // PLOT_POINTS)
    # Keep every zero-window crossing and cwnd change beyond the thinning.
    keep = np.zeros(len(s), bool)
    keep[::step] = True
    keep[s["why"] != SAMPLE_WHY.index("period")] = True
    if keep.sum() > 4 * PLOT_POINTS:
        keep[:] = False
        keep[:: max(1, len(s) // (4 * PLOT_POINTS))] = True
    t = (s["ts"][keep].astype(np.int64) - t0) / 1e9
    ssthresh = s["ssthresh"][keep].astype(np.int64)
    return {
        "socket": key,
        "samples": len(s),
        "t": t.round(6).tolist(),
        "cwnd": s["snd_cwnd"][keep].tolist(),
        "ssthresh": np.where(ssthresh >= INFINITE_SSTHRESH, -1, ssthresh).tolist(),
        "srtt_us": s["srtt_us"][keep].tolist(),
        "snd_wnd": s["snd_wnd"][keep].tolist(),
        "rcv_wnd": s["rcv_wnd"][keep].tolist(),
        "in_flight": (s["snd_nxt"][keep] - s["snd_una"][keep]).astype(np.uint32).tolist(),
    }


def _closed(ts: np.ndarray, wnd: np.ndarray, hits: np.ndarray) -> tuple[int, float, int]:
    """Periods with the window at 0, their total seconds, and the hits while
    closed (from the sample after the one that closed it up to the one that
    reopened it, less the reopening hit itself)."""
    periods, closed_ns, answered = 0, 0, 0
    start: int | None = None
    for i in range(len(ts)):
        zero = int(wnd[i]) == 0
        if zero and start is None:
            start = i
        elif start is not None and (not zero or i == len(ts) - 1):
            periods += 1
            closed_ns += int(ts[i]) - int(ts[start])
            answered += int(hits[start + 1 : i + 1].sum()) - (0 if zero else 1)
            start = None
    return periods, closed_ns / 1e9, max(answered, 0)
