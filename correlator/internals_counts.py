"""The `internals.*` counts the expectations read, from the sockets' figures.

Summed over the sockets, and per bulk-sending actor: its transfer as it
reported it (actors/client.py bulk_sent) beside what the kernel showed of
its socket.
"""

from __future__ import annotations

from typing import Any

from correlator.socket_figures import SocketFigures, entered


def counts(figures: dict[str, SocketFigures]) -> dict[str, Any]:
    fs = list(figures.values())
    cong: dict[str, int] = {}
    errors: dict[str, int] = {}
    for f in fs:
        for _, name in f.cong:
            cong[name] = cong.get(name, 0) + 1
        for name, n in f.errors.items():
            errors[name] = errors.get(name, 0) + n
    return {
        "sockets": len(fs),
        "samples": sum(f.samples for f in fs),
        "hits": sum(f.hits for f in fs),
        "retransmits": sum(f.retransmits for f in fs),
        "retransmits_given_up": sum(f.retrans_given_up for f in fs),
        "cong_states": cong,
        "resets_sent": sum(f.resets_sent for f in fs),
        "resets_received": sum(f.resets_received for f in fs),
        "errors": errors,
        "cwnd_max": max((f.cwnd_max for f in fs), default=0),
        "bytes_acked": sum(f.bytes_acked for f in fs),
        "zero_window": {
            "sockets": sum(1 for f in fs if f.zero_periods),
            "periods": sum(f.zero_periods for f in fs),
            "closed_s": round(max((f.zero_closed_s for f in fs), default=0.0), 3),
            "acks": sum(f.zero_probes for f in fs),
            "probes": sum(f.zero_probes for f in fs),
        },
    }


def actors(bulk: dict[str, dict[str, Any]], figures: dict[str, SocketFigures]) -> dict[str, Any]:
    """Per bulk-sending actor: its transfer as it reported it, and what
    the kernel showed of its socket."""
    out: dict[str, Any] = {}
    for key, rec in bulk.items():
        f = figures.get(key, SocketFigures(key))
        seconds = float(rec.get("seconds") or 0)
        out[str(rec.get("actor"))] = {
            "bytes": int(rec.get("bytes") or 0),
            "seconds": round(seconds, 3),
            "mbit_s": round(int(rec.get("bytes") or 0) * 8 / seconds / 1e6, 2) if seconds else 0,
            "retransmits": f.retransmits,
            "cong_states": entered(f),
            "cwnd_max": f.cwnd_max,
            "zero_window_s": round(f.zero_closed_s, 3),
            "eagain": int(rec.get("eagain") or 0),
        }
    return out
