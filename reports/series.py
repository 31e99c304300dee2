"""The TCP internals' series in the run directory and in trace.json.

tcp_series.jsonl: one line per tcp_probe sample (socket, t_s, cwnd,
ssthresh (null before the first loss), srtt_us, snd_wnd, rcv_wnd,
in_flight, hits, why) and per discrete event (socket, t_s, event:
retransmit (with `segs` when the skb held several segments), cong_state,
send_reset, receive_reset, sk_error), in
correlator/internals.py's order: samples per socket, then events by time.
trace.json gets Perfetto counter tracks per socket (the plotted ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from reports.writers import TraceWriter

SERIES = "tcp_series.jsonl"


def write_series(run_dir: Path, tcp: dict[str, Any]) -> None:
    """tcp_series.jsonl, only for a run with internals."""
    if not tcp["rows"]:
        return
    tmp = Path(run_dir) / (SERIES + ".tmp")
    with open(tmp, "wb") as f:
        for row in tcp["rows"]:
            f.write(orjson.dumps(row) + b"\n")
    tmp.replace(Path(run_dir) / SERIES)


def series_counters(trace: TraceWriter, plots: list[dict[str, Any]], offset_s: float) -> None:
    """Counter tracks: segments (cwnd, ssthresh), bytes (windows, in flight), srtt."""
    for p in plots:
        ts = [t + offset_s for t in p["t"]]
        seg, byt, rtt = [], [], []
        for i, t in enumerate(ts):
            s = {"cwnd": p["cwnd"][i]}
            if p["ssthresh"][i] >= 0:
                s["ssthresh"] = p["ssthresh"][i]
            seg.append([t, s])
            byt.append([t, {k: p[k][i] for k in ("snd_wnd", "rcv_wnd", "in_flight")}])
            rtt.append([t, {"srtt_us": p["srtt_us"][i]}])
        trace.counters(f"{p['socket']} cwnd/ssthresh (segments)", seg)
        trace.counters(f"{p['socket']} windows, in flight (bytes)", byt)
        trace.counters(f"{p['socket']} srtt (us)", rtt)
