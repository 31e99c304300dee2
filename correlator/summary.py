"""The run's summary: counts, rates, losses, coverage, diagnosis, expectations."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from correlator.expect import check, overall
from correlator.outcomes import OUTCOMES
from correlator.recording import RecordingStats
from correlator.result import Result

# The roots of summary["counts"] that come from the probes (the kernel view);
# the others come from the actors (logs, their own counters, the observer).
KERNEL_COUNTS = frozenset(
    {
        "connections",
        "listeners",
        "outcomes",
        "kernel_errors",
        "accept",
        "epoll",
        "epoll_by_actor",
        "kernel_events",
        "max_live_sockets",
        "coverage",
        "lost",
    }
)
# libzmq (4.3+) names its background threads ZMQbg/IO/<n> and ZMQbg/Reaper:
# they wait in epoll too, for the bus, not for the actor's connections.
ZMQ_THREAD_PREFIX = "ZMQbg/"


@dataclass
class Horizon:
    """How far the figures reach, in seconds from the run's start: the whole
    run, or up to where the kernel view ended (the probe process died) or
    where the recording was cut short."""

    run_s: float
    kernel_ended_s: float | None = None
    kernel_why: str | None = None
    recording_ends_s: float | None = None
    recording_why: str | None = None

    @property
    def complete(self) -> bool:
        return self.kernel_ended_s is None and self.recording_ends_s is None

    def kernel_until(self) -> tuple[float, str] | None:
        """Where kernel data ends, and what ended: None if it covers the run."""
        ends = []
        if self.kernel_ended_s is not None:
            ends.append((self.kernel_ended_s, "the kernel view ended"))
        if self.recording_ends_s is not None:
            ends.append((self.recording_ends_s, "the recording ends"))
        return min(ends) if ends else None

    def judge(self, path: str, phase_end_s: dict[str, float]) -> str | None:
        """Why the count at `path` cannot be judged, or None when it can: its
        data reaches past where the kernel view or the recording ends."""
        parts = path.split(".")
        if parts[0] == "phases" and len(parts) > 2:
            end, root = phase_end_s.get(parts[1], self.run_s), parts[2]
        else:
            end, root = self.run_s, parts[0]
        if self.recording_ends_s is not None and end > self.recording_ends_s:
            return f"the recording ends at {self.recording_ends_s:g} s"
        if root in KERNEL_COUNTS and self.kernel_ended_s is not None and end > self.kernel_ended_s:
            return f"the kernel view ended at {self.kernel_ended_s:g} s"
        return None


def horizon(
    c: Result, rec: RecordingStats, meta: dict[str, Any], t0: int, duration_s: float
) -> Horizon:
    def at(ns: int) -> float:
        return round(max(ns - t0, 0) / 1e9, 3)

    h = Horizon(run_s=round(duration_s, 3))
    for info in (meta.get("actors") or {}).values():
        if isinstance(info, dict) and info.get("role") == "probes" and info.get("crashed"):
            ended = info.get("ended_mono_ns")
            h.kernel_ended_s = at(ended) if isinstance(ended, int) else at(c.last_ns)
            h.kernel_why = f"the probe process crashed (exit code {info.get('exit_code')})"
    # run.json says how many bytes the orchestrator wrote: a shorter file lost
    # its end, even when it was cut between two frames.
    written = (meta.get("recording") or {}).get("bytes")
    missing = written - rec.bytes if isinstance(written, int) and rec.bytes < written else 0
    if rec.truncated_tail or missing:
        h.recording_ends_s = at(rec.last_mono_ns) if rec.last_mono_ns is not None else 0.0
        h.recording_why = (
            f"{missing} of its {written} bytes are missing at the end"
            if missing
            else "its last frame is cut off"
        )
    return h


def _pct(num: int, den: int) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def _who(actor: str | None, pid: int) -> str:
    if pid < 0:
        return "an unknown owner"
    return f"{actor} pid {pid}" if actor and actor != "?" else f"pid {pid}"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


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


def _counters(c: Result, error: str) -> dict[str, int]:
    """Each actor's own count of `error` (its progress report's failed.<error>)."""
    out = {}
    for actor, tree in c.progress.items():
        failed = tree.get("failed")
        n = failed.get(error) if isinstance(failed, dict) else None
        if isinstance(n, int | float) and n:
            out[actor] = int(n)
    return out


def _own_calls(e: dict[str, Any]) -> int:
    """epoll_wait calls of the process's own threads (all, without per-thread data)."""
    threads = e.get("by_thread")
    if e["source"] != "events" or not threads:
        return int(e["calls"])
    return sum(t["calls"] for t in threads if not t["comm"].startswith(ZMQ_THREAD_PREFIX))


def _epoll_sentence(c: Result, pid: int, e: dict[str, Any]) -> str:
    """Who waited in epoll and which of its threads did: an actor's own
    threads are named, ZeroMQ's bus threads only counted."""
    served = c.conns_by_owner_max.get(pid, 0)
    who = _who(c.pid_actor.get(pid), pid)
    held = f"held {_plural(served, 'connection')} at once" if served else "waited in epoll"
    threads = e.get("by_thread") or []
    if e["source"] != "events" or not threads:
        approx = "at most " if e["source"] != "events" else ""
        return (
            f"{who} {held}: {e['calls']} epoll_wait calls, median {approx}{e['median_ready']} "
            f"ready per wake-up (max {approx}{e['max_ready']}, {e['timeouts']} returned empty)."
        )
    own = [t for t in threads if not t["comm"].startswith(ZMQ_THREAD_PREFIX)]
    zmq = [t for t in threads if t["comm"].startswith(ZMQ_THREAD_PREFIX)]

    def figures(t: dict[str, Any]) -> str:
        return (
            f"{t['comm'] or 'thread'} (tid {t['tid']}): {_plural(t['calls'], 'epoll_wait call')}, "
            + (f"up to {t['max_ready']} ready per wake-up, " if t["max_ready"] else "")
            + f"{t['timeouts']} returned empty"
        )

    if len(own) == 1:
        wait = "and waited for them in one thread" if served else "in one thread"
        s = f"{who} {held} {wait}, {figures(own[0])}"
    else:
        n = len(own)
        wait = f"; {n} of its threads waited in epoll" if served else f" in {n} threads"
        s = f"{who} {held}{wait}: " + "; ".join(figures(t) for t in own[:3])
        if len(own) > 3:
            s += f"; {len(own) - 3} more"
    if zmq:
        calls = sum(t["calls"] for t in zmq)
        s += f" (ZeroMQ's {_plural(len(zmq), 'bus thread')} made {_plural(calls, 'more call')})"
    return s + "."


def diagnose(
    c: Result,
    cnt: dict[str, Any],
    cov: dict[str, Any],
    loss: dict[str, Any],
    meta: dict[str, Any],
    h: Horizon | None = None,
) -> list[str]:
    """Plain sentences, most important first, each built from the data.

    Where the kernel view or the recording ends early (`h`), that comes
    first, and no sentence claims the absence of something from the part
    that is missing."""
    h = h or Horizon(run_s=0.0)
    out: list[str] = []
    kernel_cut = h.kernel_until()
    # "until 3.2 s, where the kernel view ended, " or "" for a whole run.
    until = f"until {kernel_cut[0]:g} s, where {kernel_cut[1]}, " if kernel_cut else ""
    # Events lost on the way (ring drops, damaged frames, gaps, streams
    # without their end) may hide what an absence claim denies: say so.
    r = loss["recording"]
    holes = (
        loss["kernel_drops_total"]
        or r["corrupt_frames"]
        or r["gap_count"]
        or any(not v["complete"] for v in r["senders"].values())
    )
    seen_part = " in what was recorded (events were lost: see Losses)" if holes else ""
    if h.kernel_ended_s is not None:
        out.append(
            f"The kernel view ended {h.kernel_ended_s:g} s into the {h.run_s:g} s run: "
            f"{h.kernel_why}. Kernel figures cover only those {h.kernel_ended_s:g} s."
        )
    if h.recording_ends_s is not None:
        out.append(
            f"The recording ends {h.recording_ends_s:g} s into the {h.run_s:g} s run "
            f"({h.recording_why}): every figure covers only that part."
        )

    by_outcome: dict[str, list[tuple[str, int, str, int]]] = {}
    for (outcome, actor, pid, role), n in c.outcome_owner.items():
        by_outcome.setdefault(outcome, []).append((actor, pid, role, n))
    for v in by_outcome.values():
        v.sort(key=lambda x: -x[3])

    as_of = f" (as of {kernel_cut[0]:g} s, where {kernel_cut[1]})" if kernel_cut else ""
    for actor, pid, role, n in by_outcome.get("stuck_close_wait", []):
        how = "accepted and never closed" if role == "passive" else "the peer closed, it never did"
        s = f"{_plural(n, 'socket')} stuck in CLOSE_WAIT, owned by {_who(actor, pid)}: {how}"
        if c.peers_of_stuck:
            s += f"; their peers wait in FIN_WAIT_2 ({c.peers_of_stuck} of them)"
        out.append(s + as_of + ".")
    fw2 = cnt["outcomes"]["stuck_fin_wait2"]
    if fw2 and not c.peers_of_stuck:
        for actor, pid, _role, n in by_outcome.get("stuck_fin_wait2", []):
            out.append(
                f"{_plural(n, 'socket')} stuck in FIN_WAIT_2, owned by {_who(actor, pid)}: "
                f"they closed, the peer never did{as_of}."
            )

    peak_tw = cnt["states_peak"].get("TIME_WAIT")
    logged = cnt["errors"].get("EADDRNOTAVAIL", 0)
    seen = c.no_port_failures
    counters = _counters(c, "EADDRNOTAVAIL")
    counted = sum(counters.values())
    no_ports = max(logged, seen, counted)
    tw = cnt["outcomes"]["time_wait"]
    if no_ports:
        climb = f"TIME_WAIT climbed to {peak_tw} and " if peak_tw else ""
        # Actors log a sample of their failures; their own counters count all.
        sources = []
        if seen or not kernel_cut:
            sources.append(f"the kernel saw {seen} connects end without a port")
        if counters:
            sources += [f"{a}'s own counter says {n}" for a, n in sorted(counters.items())]
        elif logged:
            sources.append(f"the actors logged {logged}")
        out.append(
            f"{climb}connect() failed {no_ports} times with EADDRNOTAVAIL "
            f"(ephemeral ports exhausted): {' and '.join(sources)}."
        )
        ends = _phase_end_s(meta, c)
        for name, ph in c.phase_counts.items():
            failed_here = ph.get("errors", {}).get("EADDRNOTAVAIL") or ph.get(
                "kernel_errors", {}
            ).get("EADDRNOTAVAIL")
            if kernel_cut and ends.get(name, h.run_s) > kernel_cut[0]:
                continue  # part of this phase is missing: no claim of absence
            if ph.get("connections") and not failed_here:
                peak = ph.get("states_peak", {}).get("TIME_WAIT")
                tail = f", TIME_WAIT peaked at {peak}" if peak is not None else ""
                out.append(
                    f"In phase {name!r} connect() never failed with EADDRNOTAVAIL{seen_part}"
                    f" ({_plural(ph['connections'], 'socket')}{tail})."
                )
    elif tw:
        peak = f" (at most {peak_tw} at once)" if peak_tw else ""
        out.append(
            f"{_plural(tw, 'connection')} closed actively and left a TIME_WAIT socket{peak}; "
            f"{until}no connect() failed for lack of ports{seen_part}."
        )

    for pid, per in sorted(lab_accepts(c).items()):
        owner = c.pid_actor.get(pid)
        if per.get("EMFILE"):
            out.append(
                f"accept4 failed {per['EMFILE']} times with EMFILE in {_who(owner, pid)}: "
                "the process hit its open-file limit."
            )
        if per.get("ENFILE"):
            out.append(
                f"accept4 failed {per['ENFILE']} times with ENFILE in {_who(owner, pid)}: "
                "the system-wide file table is full."
            )
    if not any(per.get("EMFILE") for per in lab_accepts(c).values()):
        for (err, event, actor, pid), n in sorted(c.error_owner.items()):
            if err == "EMFILE":
                out.append(
                    f"{event.replace('_failed', '')} failed {n} times with EMFILE in "
                    f"{_who(actor, pid)} (from its log): the process hit its open-file limit."
                )

    # The busiest few by the calls of their own threads (ZeroMQ's bus threads
    # wait in epoll in every actor); the plot and summary.json have them all.
    busiest = sorted(
        ((pid, e, _own_calls(e)) for pid, e in epoll_view(c).items()), key=lambda x: -x[2]
    )[:3]
    for pid, e, own_calls in busiest:
        if own_calls:
            out.append(_epoll_sentence(c, pid, e))

    o = cnt["outcomes"]
    if o["clean"]:
        out.append(
            f"{_plural(o['clean'], 'connection')} closed cleanly on the passive side "
            f"(CLOSE_WAIT -> LAST_ACK -> CLOSE); {tw} active closers went to TIME_WAIT."
        )
    if o["refused"]:
        out.append(f"{_plural(o['refused'], 'connect')} refused (SYN answered by RST).")
    if o["reset"]:
        out.append(f"{_plural(o['reset'], 'socket')} ended by a reset (-> CLOSE abruptly).")
    if o["never_accepted"]:
        never = f"was not accepted by {kernel_cut[0]:g} s" if kernel_cut else "never accepted"
        out.append(
            f"{_plural(o['never_accepted'], 'connection')} completed the handshake "
            f"but the application {never} them (they waited in the accept queue)."
        )
    other_fail = o["failed_connect"] - seen
    if other_fail > 0:
        out.append(f"{_plural(other_fail, 'connect')} failed before leaving SYN_SENT.")
    if o["open_at_end"]:
        if kernel_cut:
            out.append(
                f"{_plural(o['open_at_end'], 'socket')} open at {kernel_cut[0]:g} s, where "
                f"{kernel_cut[1]}: what became of them is not known."
            )
        else:
            out.append(f"{_plural(o['open_at_end'], 'socket')} still open when the run ended.")

    for name, info in (meta.get("actors") or {}).items():
        if not isinstance(info, dict) or not info.get("crashed"):
            continue
        if info.get("role") == "probes":
            continue  # said first, with what it means for the figures
        out.append(f"Actor {name} crashed (exit code {info.get('exit_code')}).")
    if meta.get("interrupted"):
        out.append("The run was interrupted: the figures cover what was recorded until then.")

    lost = []
    if h.kernel_ended_s is not None:
        lost.append(f"the kernel view ended at {h.kernel_ended_s:g} s of {h.run_s:g} s")
    if h.recording_ends_s is not None:
        lost.append(f"the recording ends at {h.recording_ends_s:g} s ({h.recording_why})")
    if loss["kernel_drops_total"]:
        parts = ", ".join(f"{k}: {v}" for k, v in loss["kernel_drops"].items() if v)
        lost.append(f"the kernel dropped {loss['kernel_drops_total']} events ({parts})")
    r = loss["recording"]
    if r["corrupt_frames"]:
        lost.append(
            f"{r['corrupt_frames']} corrupt recording frames were skipped "
            f"({r['skipped_bytes']} bytes)"
        )
    if r["gap_count"]:
        lost.append(f"{r['gap_count']} sequence gaps in the recording")
    incomplete = sorted(s for s, v in r["senders"].items() if not v["complete"])
    if incomplete:
        lost.append(
            f"{_plural(len(incomplete), 'sender')} without a complete stream up to its eof "
            f"({', '.join(incomplete[:5])}{', ...' if len(incomplete) > 5 else ''})"
        )
    if loss["kernel_close_not_seen"]:
        lost.append(
            f"{loss['kernel_close_not_seen']} sockets were reused before their closing "
            "transitions arrived (the probe filtered or lost them; outcome 'unknown')"
        )
    if loss["kernel_transition_gaps"]:
        lost.append(f"{loss['kernel_transition_gaps']} state transitions skipped a state")
    if loss["late_events"]:
        lost.append(f"{loss['late_events']} events arrived too late to sort in time order")
    if lost:
        out.append("Losses: " + "; ".join(lost) + ".")
    else:
        out.append("No event was lost: no kernel drops, no corrupt frames, no sequence gaps.")

    if cov["app_connections"] or cov["kernel_events"]:
        a, k = (
            f"{p}%" if p is not None else "n/a"
            for p in (cov["app_connections_pct"], cov["kernel_events_pct"])
        )
        watched = ""
        if kernel_cut and h.run_s:
            share = round(100 * kernel_cut[0] / h.run_s, 1)
            part = "the kernel view" if h.kernel_ended_s == kernel_cut[0] else "the recording"
            watched = f" {part} covers {kernel_cut[0]:g} s of the {h.run_s:g} s run ({share}%);"
        out.append(
            f"Coverage:{watched} {a} of application connections matched "
            f"their kernel transitions; {k} of kernel events "
            "have an owner"
            + (
                f" ({cov['kernel_events_outside_lab']} events of processes outside the lab "
                "left out)."
                if cov["kernel_events_outside_lab"]
                else "."
            )
        )
    return out


def _phase_end_s(meta: dict[str, Any], c: Result) -> dict[str, float]:
    """Each phase's end in seconds from the run's start (run.json's phases)."""
    t0 = c.t0 or (c.first_ns or 0)
    out = {}
    for p in meta.get("phases") or []:
        if isinstance(p, dict) and isinstance(p.get("end_mono_ns"), int):
            out[str(p.get("name"))] = round((p["end_mono_ns"] - t0) / 1e9, 3)
    return out


def build_summary(
    c: Result,
    rec: RecordingStats,
    meta: dict[str, Any],
    extra_counts: dict[str, Any] | None = None,
    extra_sentences: list[str] | None = None,
) -> dict[str, Any]:
    """`extra_counts`/`extra_sentences`: figures from outside the recording
    (a two-host run's socket snapshots), checked and told like the rest."""
    cnt = counts(c)
    cnt.update(extra_counts or {})
    cov = coverage(c)
    cnt["coverage"] = {k: v for k, v in cov.items() if isinstance(v, int | float)}
    loss = losses(c, rec, meta)
    cnt["lost"] = {
        "kernel_drops": loss["kernel_drops_total"],
        "close_not_seen": loss["kernel_close_not_seen"],
        "corrupt_frames": rec.corrupt_frames,
        "gaps": len(rec.ledger.gaps),
        "late_events": loss["late_events"],
    }
    started, ended = meta.get("started_mono_ns"), meta.get("ended_mono_ns")
    if isinstance(started, int) and isinstance(ended, int) and ended > started:
        t0, duration_s = started, (ended - started) / 1e9
    elif c.first_ns is not None and c.last_ns > c.first_ns:
        t0, duration_s = c.first_ns, (c.last_ns - c.first_ns) / 1e9
    else:
        t0, duration_s = c.first_ns or 0, 0.0
    k_total = sum(cnt["kernel_events"].values())
    rates = {
        "duration_s": round(duration_s, 3),
        "kernel_events_per_s": round(k_total / duration_s, 1) if duration_s else None,
        "connections_per_s": round(cnt["connections"] / duration_s, 1) if duration_s else None,
    }
    h = horizon(c, rec, meta, t0, duration_s)
    phase_ends = _phase_end_s(meta, c)
    expectations = check(meta.get("expected"), cnt, lambda path: h.judge(path, phase_ends))
    diagnosis = diagnose(c, cnt, cov, loss, meta, h) + list(extra_sentences or [])
    if expectations:
        held = sum(1 for e in expectations if e["status"] == "held")
        line = f"{held} of {len(expectations)} expectations held"
        unknown = [e["path"] for e in expectations if e["status"] == "unknown"]
        if unknown:
            why = next(e["why"] for e in expectations if e["status"] == "unknown")
            line += f"; {len(unknown)} unknown ({why}): {', '.join(unknown)}"
        failed = [
            f"{e['path']} {e['expect']} (got {e['actual']})"
            for e in expectations
            if e["status"] == "failed"
        ]
        diagnosis.append(line + ("; failed " + ", ".join(failed) if failed else "") + ".")
    status = overall(expectations)
    return {
        "scenario": meta.get("scenario"),
        "description": meta.get("description"),
        "started_wall": meta.get("started_wall"),
        "interrupted": bool(meta.get("interrupted")),
        "actors": meta.get("actors") or {},
        "phases": meta.get("phases") or [],
        "diagnosis": diagnosis,
        "expectations": expectations,
        # "held", "failed" (any failed) or "unknown" (none failed, some could
        # not be judged: their data is missing); None without expectations.
        "expectations_status": status,
        "expectations_held": {"held": True, "failed": False}.get(status or ""),
        "horizon": asdict(h) | {"complete": h.complete},
        "sockets": sockets(c),
        "counts": cnt,
        "rates": rates,
        "coverage": cov,
        "losses": loss,
        "correlator": {
            "reorder_max_held": c.reorder_max_held,
            "max_live_sockets": c.max_live,
            "settle_max_held": c.settle_max_held,
        },
        "plots": _plot_data(c),
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


def _plot_data(c: Result) -> dict[str, Any]:
    t0 = c.t0 or (c.first_ns or 0)

    def series(points: list[tuple[int, dict[str, int]]]) -> list[list[Any]]:
        return [[round((ts - t0) / 1e9, 6), vals] for ts, vals in points]

    return {
        "t0_mono_ns": t0,
        "observer_states": series(c.observer_series.points),
        "kernel_states": series(c.kernel_series.points),
        "fds": series(c.fd_series.points),
        "lifetimes_ns": {k: h.as_dict() for k, h in sorted(c.lifetimes.items())},
        "state_durations_ns": {k: h.as_dict() for k, h in sorted(c.state_time.items())},
        "epoll": {
            str(pid): {"actor": c.pid_actor.get(pid), **e} for pid, e in epoll_view(c).items()
        },
        "accept": {
            str(pid): {"actor": c.pid_actor.get(pid), **per} for pid, per in lab_accepts(c).items()
        },
        "phases": [
            {"name": n, "t": round((s - t0) / 1e9, 6)}
            for n, s in zip(c.phase_names, c.phase_starts, strict=True)
        ],
    }
