"""The diagnosis: plain sentences, most important first, each built from
the figures; none claims more than the recorded part of the run shows."""

from __future__ import annotations

from typing import Any

from correlator.figures import epoll_view, lab_accepts
from correlator.horizon import Horizon, phase_end_s
from correlator.result import Result

# libzmq (4.3+) names its background threads ZMQbg/IO/<n> and ZMQbg/Reaper:
# they wait in epoll too, for the bus, not for the actor's connections.
ZMQ_THREAD_PREFIX = "ZMQbg/"


def _who(actor: str | None, pid: int) -> str:
    if pid < 0:
        return "an unknown owner"
    return f"{actor} pid {pid}" if actor and actor != "?" else f"pid {pid}"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


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
        ends = phase_end_s(meta, c)
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
    misses = {k: p["misses"] for k, p in loss["probe_programs"].items() if p.get("misses")}
    if misses:
        parts = ", ".join(f"{k}: {v}" for k, v in misses.items())
        lost.append(
            f"the kernel skipped {sum(misses.values())} runs of the probes' programs ({parts}; "
            "another BPF program was running on that CPU)"
        )
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
