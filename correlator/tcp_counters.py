"""The kernel's TCP counters over the run, as the lab read them.

lab/netstat.py reads them on every host at the start and the end of the run
(run.json's lab.tcp_counters), with the CLOCK_MONOTONIC time of each reading.
"""

from __future__ import annotations

from typing import Any


def kernel_counters(meta: dict[str, Any]) -> dict[str, int]:
    """The kernel's TCP counters over the run, summed over the hosts
    (lab/netstat.py, in run.json's lab.tcp_counters): end - start."""
    out: dict[str, int] = {}
    hosts = ((meta.get("lab") or {}).get("tcp_counters") or {}).values()
    for c in hosts:
        start, end = c.get("start") or {}, c.get("end") or {}
        for k, v in end.items():
            name = k.partition(".")[2]
            if k in start and name:
                out[name] = out.get(name, 0) + int(v) - int(start[k])
    return out


def counters_window(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(first start reading, last end reading) in CLOCK_MONOTONIC ns, or None."""
    hosts = list(((meta.get("lab") or {}).get("tcp_counters") or {}).values())
    starts = [int((c.get("start") or {}).get("mono_ns", 0)) for c in hosts]
    ends = [int((c.get("end") or {}).get("mono_ns", 0)) for c in hosts]
    if not hosts or not all(starts) or not all(ends):
        return None
    return min(starts), max(ends)
