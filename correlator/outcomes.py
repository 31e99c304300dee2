"""A connection's lifecycle row as connections.jsonl shows it (its outcome is
decided in outcome_rules.py)."""

from __future__ import annotations

import errno as errno_mod
from typing import Any

from correlator.lifecycles import MAX_TRANSITIONS, Conn

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


def timewait_end(conn: Conn, last_ns: int) -> int | None:
    """When the peer of an orphaned closer finally closed (or the run ended)."""
    peer = conn.peer_wait
    if peer is None:
        return None
    return peer.end_ns if peer.end_ns is not None else last_ns


def owner_dict(conn: Conn) -> dict[str, Any] | None:
    if conn.owner_pid is None:
        return None
    return {
        "actor": conn.owner_actor,
        "pid": conn.owner_pid,
        "fd": conn.owner_fd,
        "via": conn.owner_via,
    }


def lifecycle_row(
    conn: Conn, at_end: bool, t0: int, last_ns: int, phase: str | None
) -> dict[str, Any]:
    """The row, its kept transitions' states still to put before `states`
    (correlator/kept.py)."""
    end = conn.end_ns if conn.end_ns is not None else last_ns
    states: list[dict[str, Any]] = []
    tw_end = timewait_end(conn, last_ns)
    if tw_end is not None and conn.end_ns is not None:
        # Not a tracepoint state: the timewait socket that took over waits
        # in FIN_WAIT2 for the peer's FIN (its close), or to the run's end.
        states.append(
            {
                "state": "FIN_WAIT2",
                "start_ns": conn.end_ns,
                "dur_ns": tw_end - conn.end_ns,
                "cpu_pid": None,
                "timewait": True,
            }
        )
    t = conn.addr4
    return {  # one lifecycle
        "id": conn.id,
        "kind": "listener" if conn.role == "listener" else "connection",
        "role": conn.role,
        "outcome": conn.outcome,
        "laddr": t[0] if t else None,
        "lport": t[1] if t else None,
        "raddr": t[2] if t and conn.role != "listener" else None,
        "rport": t[3] if t and conn.role != "listener" else None,
        "dest": list(conn.dest) if conn.dest else None,
        "family": conn.family,
        "skaddr": conn.skaddr,
        "start_ns": conn.start_ns,
        "end_ns": conn.end_ns,
        "t_start": seconds(conn.start_ns - t0) if t0 else None,
        "duration_ns": end - conn.start_ns,
        "closed_in_run": not at_end,
        "timewait_from": None,  # with the outcome (outcome_rules.py)
        "first_old": conn.first_old,
        "last_state": conn.state,
        "owner": owner_dict(conn),
        "first_cpu_pid": conn.first_cpu_pid,
        "states": states,
        "transitions_dropped": max(conn.n_rows - MAX_TRANSITIONS, 0),
        "accepted": conn.accepted,
        "app_closed": conn.app_closed,
        "error": conn.error,
        "app": conn.action_counts(),
        # The first app actions in order, [ts_ns, event] (capped).
        "actions": [list(a) for a in conn.actions or ()],
        "phase": phase,
    }
