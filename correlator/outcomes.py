"""The outcomes a connection can have, and the small conversions its row uses."""

from __future__ import annotations

import errno as errno_mod

OUTCOMES = (
    "clean",
    "time_wait",
    "stuck_close_wait",
    "stuck_fin_wait2",
    "refused",
    "reset",
    "never_accepted",
    "failed_connect",
    "open_at_end",
    "unknown",  # its closing transitions were never seen (filtered or dropped)
)

_EXACT_NS = 10**15


def errno_name(num: int) -> str:
    return errno_mod.errorcode.get(num, f"errno{num}")


def seconds(ns: int) -> float:
    """ns in seconds, rounded to the ns: round(ns / 1e9, 9), without round()'s
    cost where it changes nothing (the nearest double to a whole number of ns
    is its own rounding while a double's step is finer than 1 ns: < 4e6 s)."""
    if -_EXACT_NS < ns < _EXACT_NS:
        return ns / 1e9
    return round(ns / 1e9, 9)
