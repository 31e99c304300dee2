"""The run's figures from the correlator's result: counts, coverage, losses,
epoll use per process and per thread, sockets by side."""

from __future__ import annotations

from typing import Any

from correlator.outcomes import OUTCOMES
from correlator.recording import RecordingStats
from correlator.result import Result


def _pct(num: int, den: int) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def coverage(c: Result) -> dict[str, Any]:
    n = c.n
    app_total = sum(n.get(f"coverage.app_{e}", 0) for e in ("connect", "accept", "connect_failed"))
    app_matched = sum(
        n.get(f"coverage.app_{e}_matched", 0) for e in ("connect", "accept", "connect_failed")
    )
    k_total = sum(n.get(f"coverage.kernel_{t}", 0) for t in ("tcp_state", "accept", "epoll"))
    k_owned = sum(n.get(f"coverage.kernel_{t}_owned", 0) for t in ("tcp_state", "accept", "epoll"))
    out: dict[str, Any] = {
        "app_connections": app_total,
        "app_connections_matched": app_matched,
        "app_connections_pct": _pct(app_matched, app_total),
        "kernel_events": k_total,
        "kernel_events_owned": k_owned,
        "kernel_events_pct": _pct(k_owned, k_total),
        "kernel_events_outside_lab": n.get("kernel.outside_lab", 0),
        "kernel_connections": n.get("coverage.kernel_connections", 0),
        "kernel_connections_owned": n.get("coverage.kernel_connections_owned", 0),
        "kernel_connections_pct": _pct(
            n.get("coverage.kernel_connections_owned", 0), n.get("coverage.kernel_connections", 0)
        ),
        "by_probe": {},
    }
    for t in ("tcp_state", "accept", "epoll"):
        tot = n.get(f"coverage.kernel_{t}", 0)
        if tot:
            owned = n.get(f"coverage.kernel_{t}_owned", 0)
            out["by_probe"][t] = {"events": tot, "owned": owned, "pct": _pct(owned, tot)}
    for e in ("connect", "accept", "connect_failed"):
        tot = n.get(f"coverage.app_{e}", 0)
        if tot:
            m = n.get(f"coverage.app_{e}_matched", 0)
            out[f"app_{e}"] = {"records": tot, "matched": m, "pct": _pct(m, tot)}
    return out


def in_lab(c: Result, pid: int) -> bool:
    """A pid is the lab's when it is an actor's (or when no actor is known)."""
    return not c.pid_actor or pid in c.pid_actor


def lab_accepts(c: Result) -> dict[int, dict[str, int]]:
    return {pid: per for pid, per in c.accepts.items() if in_lab(c, pid)}


def _by_thread(tids: dict[Any, list[Any]]) -> list[dict[str, Any]]:
    """Each thread's epoll_wait figures, busiest first."""
    rows = [
        {"tid": tid, "comm": comm, "calls": calls, "timeouts": empty, "max_ready": top}
        for tid, (calls, empty, top, comm) in tids.items()
    ]
    return sorted(rows, key=lambda r: (-r["calls"], str(r["tid"])))


def epoll_view(c: Result) -> dict[int, dict[str, Any]]:
    """Per lab pid: epoll_wait figures from per-call events, or from the probe's
    in-kernel histogram when that saw more calls (per-call events switched off)."""
    out: dict[int, dict[str, Any]] = {}
    for pid in sorted(set(c.epoll) | set(c.epoll_kernel_hist)):
        if not in_lab(c, pid):
            continue
        e = c.epoll.get(pid)
        hist = c.epoll_kernel_hist.get(pid, [])
        if e is not None and e["calls"] >= sum(hist):
            ready = e["ready"]
            out[pid] = {
                "source": "events",
                "calls": e["calls"],
                "timeouts": e["timeouts"],
                "errors": e["errors"],
                "threads": len(e["tids"]),
                "busiest_thread_calls": max((t[0] for t in e["tids"].values()), default=0),
                "by_thread": _by_thread(e["tids"]),
                "median_ready": ready.median(),
                "max_ready": max(ready.counts) if ready.counts else 0,
                "ready": ready.as_dict(),
            }
            continue
        # Slot i holds ready counts in [2**(i-1), 2**i); slot 0 holds zero.
        calls = sum(hist)
        woke = calls - (hist[0] if hist else 0)
        median = 0
        seen = 0
        for i, n in enumerate(hist):
            if i == 0:
                continue
            seen += n
            if woke and seen >= (woke + 1) // 2:
                median = (1 << i) - 1
                break
        top = max((i for i, n in enumerate(hist) if n), default=0)
        out[pid] = {
            "source": "in-kernel histogram",
            "calls": calls,
            "timeouts": hist[0] if hist else 0,
            "errors": e["errors"] if e else 0,
            "threads": len(e["tids"]) if e else 0,
            "busiest_thread_calls": max((t[0] for t in e["tids"].values()), default=0) if e else 0,
            "by_thread": _by_thread(e["tids"]) if e else [],
            "median_ready": median,
            "max_ready": (1 << top) - 1 if top else 0,
            "ready": {
                "count": woke,
                "median": median,
                "binned": True,
                "counts": {str(1 << (i - 1)): n for i, n in enumerate(hist) if i and n},
            },
        }
    return out


def _epoll_by_actor(c: Result, ep: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """epoll figures per actor name (an actor may run several processes)."""
    out: dict[str, dict[str, Any]] = {}
    for pid, e in ep.items():
        name = c.pid_actor.get(pid) or f"pid{pid}"
        a = out.setdefault(
            name,
            {
                "calls": 0,
                "threads": 0,
                "processes": 0,
                "timeouts": 0,
                "median_ready": 0,
                "max_ready": 0,
                "connections_held": 0,
            },
        )
        a["calls"] += e["calls"]
        a["threads"] += e["threads"]
        a["processes"] += 1
        a["timeouts"] += e["timeouts"]
        a["median_ready"] = max(a["median_ready"], e["median_ready"])
        a["max_ready"] = max(a["max_ready"], e["max_ready"])
        a["connections_held"] += c.conns_by_owner_max.get(pid, 0)
    return out


def counts(c: Result) -> dict[str, Any]:
    accept: dict[str, int] = {}
    for per in lab_accepts(c).values():
        for k, v in per.items():
            accept[k] = accept.get(k, 0) + v
    ep = epoll_view(c)
    phases = {name: dict(node) for name, node in c.phase_counts.items()}
    for name, last in c.phase_progress.items():
        phases.setdefault(name, {})["progress"] = {a: t for a, (_, t) in sorted(last.items())}
    return {
        "connections": c.n.get("connections", 0),
        "listeners": c.n.get("listeners", 0),
        "outcomes": {o: c.outcomes.get(o, 0) for o in OUTCOMES},
        "errors": dict(sorted(c.errors.items())),
        # Errors the kernel shows whether or not an actor logged them.
        "kernel_errors": {"EADDRNOTAVAIL": c.no_port_failures},
        "accept": accept,
        "epoll": {
            "calls": sum(e["calls"] for e in ep.values()),
            "median_ready": max((e["median_ready"] for e in ep.values()), default=0),
            "max_ready": max((e["max_ready"] for e in ep.values()), default=0),
            "threads": sum(e["threads"] for e in ep.values()),
            "timeouts": sum(e["timeouts"] for e in ep.values()),
            "errors": sum(e["errors"] for e in ep.values()),
            "processes": len(ep),
        },
        "epoll_by_actor": _epoll_by_actor(c, ep),
        "states_peak": c.observer_series.peak(),
        "kernel_events": {
            "tcp_state": c.n.get("kernel.tcp_state", 0),
            "accept": c.n.get("kernel.accept", 0),
            "epoll": c.n.get("kernel.epoll", 0),
        },
        "app": dict(sorted(c.app_events.items())),
        "max_live_sockets": c.max_live,
        # Each actor's own counters, from its last progress report.
        "progress": dict(sorted(c.progress.items())),
        "phases": phases,
    }


def losses(c: Result, rec: RecordingStats, meta: dict[str, Any]) -> dict[str, Any]:
    drops = {name: p["drops"] for name, p in c.probe_programs.items()}
    return {
        "kernel_drops": drops,
        "kernel_drops_total": sum(drops.values()),
        "probe_programs": c.probe_programs,
        "recording": rec.summary(),
        "bus": meta.get("bus"),
        "late_events": c.late_events,
        "unusable": {k: v for k, v in c.n.items() if k.startswith("rejected.")},
        "kernel_close_not_seen": c.n.get("kernel.close_not_seen", 0),
        "kernel_transition_gaps": c.n.get("kernel.transition_gap", 0),
    }


def sockets(c: Result) -> dict[str, int]:
    """Sockets by side: on loopback both ends of a connection are in the lab,
    so `connections` counts each connection twice."""
    by_role: dict[str, int] = {}
    for (_outcome, _actor, _pid, role), n in c.outcome_owner.items():
        by_role[role] = by_role.get(role, 0) + n
    return {
        "total": sum(by_role.values()),
        "connect": by_role.get("active", 0),
        "server_side": by_role.get("passive", 0),
        "unknown_side": by_role.get("unknown", 0),
        "listeners": c.n.get("listeners", 0),
    }
