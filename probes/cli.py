"""`tcplab doctor` and `tcplab watch`.

bcc is only imported once a command runs (inside probes.loader), so that
`tcplab --help` works on a machine without it.
"""

from __future__ import annotations

import bisect
import json
import signal
import sys
import time
from operator import itemgetter
from types import FrameType
from typing import Any

import click

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from lab.exitcodes import need_root
from probes.fdtable import listening_owners
from probes.follow import Follower
from probes.loader import Filters, ProbeSet
from probes.owners import Owners
from probes.plan import DEFAULT_PROBES, INTERNALS, OWNER_PROBES, PROBES, ProbeError, make_plan
from probes.selectors import Selector
from probes.sockdiag import DiagQuery
from probes.timewait import INTERVAL_S, timewait_count

Event = dict[str, Any]
ts_of = itemgetter("ts")


@click.command()
@click.option("--no-self-check", is_flag=True, help="skip loading a real program")
def doctor(no_self_check: bool) -> None:
    """Check what this machine can trace and print the attach plan.

    Exits nonzero only when nothing can attach.
    """
    from probes.doctor import checks, self_check

    need_root("tcplab doctor", "it reads tracefs and loads a test eBPF program")
    try:
        plan = make_plan()
    except ProbeError as e:
        raise click.ClickException(str(e)) from None
    results = checks()
    if not no_self_check:
        results.append(self_check(plan))
    for c in results:
        mark = "ok" if c.ok else ("!!" if c.required else "--")
        click.echo(f"[{mark}] {c.name}: {c.detail}")
        if not c.ok and c.fix:
            click.echo(f"       fix: {c.fix}")
    click.echo("attach plan:")
    for line in plan.describe():
        click.echo(f"  {line}")
    from lab.shaping import support

    click.echo("lab link shaping:")
    for knob, how in support().items():
        click.echo(f"  {knob}: {how or 'not on this kernel (needs netem: `modprobe sch_netem`)'}")
    selfcheck_failed = any(c.name == "self-check" and not c.ok for c in results)
    if not plan.usable() or selfcheck_failed:
        raise click.ClickException("no probe can attach on this machine: see the fixes above")


def _human(e: Event, t0: int) -> str:
    t = f"{(e['ts'] - t0) / 1e9:10.6f}"
    if e["type"] == "tcp_state":
        return (
            f"{t} tcp    {e['saddr']}:{e['sport']} -> {e['daddr']}:{e['dport']}  "
            f"{e['old']} -> {e['new']}  sk={e['skaddr']:#x} "
            f"on-cpu={e['cpu_pid']}/{e['cpu_comm']} {_owner(e)}"
        )
    if e["type"] == "connect":
        result = "ok" if e["errno"] == 0 else _errname(e["errno"])
        return (
            f"{t} connect pid={e['pid']}/{e['comm']} fd={e['fd']} -> "
            f"{e['daddr']}:{e['dport']} {result} sk={e['skaddr']:#x} "
            f"({e['dur_ns'] / 1000:.0f} us)"
        )
    if e["type"] == "fdio":
        what = e["what"] if e["what"] != "error" else f"error {_errname(e['errno'])}"
        eof = f" eof@{(e['eof_ts'] - t0) / 1e9:.6f}" if e["eof_ts"] else ""
        return (
            f"{t} fd     pid={e['pid']}/{e['comm']} fd={e['fd']} {what} ({e['syscall']}) "
            f"sk={e['skaddr']:#x} reads={e['reads']}/{e['read_bytes']}B "
            f"writes={e['writes']}/{e['write_bytes']}B eagain={e['eagain_reads']}/"
            f"{e['eagain_writes']}{eof}"
        )
    if e["type"] == "stuck":
        return _stuck_line(e, t0)
    if e["type"] == "proc":
        return f"{t} {e['what']:<6} pid={e['pid']}/{e['comm']} -> {e['child']}"
    if e["type"] == "timewait":
        return f"{t} TIME_WAIT {e['count']} sockets"
    if e["type"] == "accept":
        result = (
            f"fd {e['fd']} from {e['peer_addr'] or '?'}:{e['peer_port']}"
            if e["errno"] == 0
            else _errname(e["errno"])
        )
        return (
            f"{t} {e['syscall']:<6} pid={e['pid']}/{e['comm']} lfd={e['lfd']} -> {result} "
            f"({e['dur_ns'] / 1000:.0f} us)"
        )
    if e["type"] == "tcp_probe":
        return (
            f"{t} cwnd   {e['saddr']}:{e['sport']} -> {e['daddr']}:{e['dport']}  "
            f"cwnd={e['snd_cwnd']} ssthresh={e['ssthresh']} snd_wnd={e['snd_wnd']} "
            f"rcv_wnd={e['rcv_wnd']} srtt={e['srtt_us']}us in_flight={e['in_flight']} "
            f"({e['why']}, {e['hits']} hits)"
        )
    if e["type"] == "tcp_events":
        state = "" if e["state"] == "UNKNOWN" else f"in {e['state']}"
        code = e["code"]
        detail = {
            "cong_state": f"-> {e['cong_state']}",
            "sk_error": _errname(code),
            "retransmit": state
            + (
                " (dropped by the qdisc)"
                if code > 0
                else f" failed: {_errname(-code)}"
                if code
                else ""
            ),
            "send_reset": state + (f" reason {code}" if code else ""),
        }.get(e["what"], "")
        return (
            f"{t} {e['what']:<13} {e['saddr']}:{e['sport']} -> {e['daddr']}:{e['dport']}  {detail}"
        ).rstrip()
    result = f"{e['ready']} ready" if e["errno"] == 0 else _errname(e["errno"])
    return (
        f"{t} {e['syscall']:<6} pid={e['pid']}/{e['comm']} epfd={e['epfd']} "
        f"max={e['maxevents']} timeout={e['timeout_ms']}ms -> {result} "
        f"after {e['dur_ns'] / 1e6:.3f} ms"
    )


def _owner(e: Event) -> str:
    if e.get("owner_pid") is None:
        return "owner=?"
    return f"owner={e['owner_pid']}/{e['owner_comm']} fd={e['owner_fd']} ({e['owner_how']})"


def _stuck_line(e: Event, t0: int) -> str:
    owner = (
        f"pid {e['owner_pid']}/{e['owner_comm']} fd {e['owner_fd']} ({e['owner_how']})"
        if e["owner_pid"] is not None
        else "owner unknown"
    )
    eof = f"read EOF at {(e['eof_ts'] - t0) / 1e9:.2f} s" if e["eof_ts"] else "no EOF read seen"
    closed = f"closed at {(e['closed_ts'] - t0) / 1e9:.2f} s" if e["closed_ts"] else "never closed"
    return (
        f"{(e['since'] - t0) / 1e9:10.6f} STUCK  {e['tuple']} {e['state']} for {e['for_s']:.1f} s"
        f"  sk={e['skaddr']:#x} {owner}: {eof}, {closed}"
    )


def _errname(n: int) -> str:
    import errno

    return errno.errorcode.get(n, f"errno {n}")


@click.command()
@click.option(
    "-p", "--pid", "pids", type=int, multiple=True, help="only this process and its children"
)
@click.option("-P", "--port", "ports", type=int, multiple=True, help="local or remote port")
@click.option("-L", "--lport", "lports", type=int, multiple=True, help="local port")
@click.option("-D", "--dport", "dports", type=int, multiple=True, help="remote port")
@click.option("--probe", "names", type=click.Choice(PROBES), multiple=True, help="only this probe")
@click.option(
    "--internals", is_flag=True, help="also the TCP internals: cwnd, windows, retransmits, resets"
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text")
@click.option("--duration", type=float, default=None, help="stop after S seconds")
@click.option(
    "--stuck",
    type=float,
    default=None,
    metavar="S",
    help="report sockets in CLOSE_WAIT or FIN_WAIT2 for longer than S seconds",
)
@click.option("--comm", "comms", multiple=True, help="only events of processes with this name")
@click.option("--cgroup", default=None, help="only events of processes in this cgroup (v2 path)")
@click.option("--timewait", is_flag=True, help="print the TIME_WAIT count every second (sock_diag)")
def watch(
    pids: tuple[int, ...],
    ports: tuple[int, ...],
    lports: tuple[int, ...],
    dports: tuple[int, ...],
    names: tuple[str, ...],
    internals: bool,
    as_json: bool,
    duration: float | None,
    stuck: float | None,
    comms: tuple[str, ...],
    cgroup: str | None,
    timewait: bool,
) -> None:
    """Run the probes alone against any process and print kernel events.

    Ports filter TCP state changes; pids filter the syscall probes (with
    ports but no pid, they stay quiet: they have no ports), follow the
    children, and keep the transitions of the sockets those pids own.
    Every TCP transition carries its socket's owner (pid, comm, fd and how
    it was learned: accept, connect, or unknown) next to the on-CPU pid.
    With --stuck S, sockets in CLOSE_WAIT or FIN_WAIT2 for longer than S
    seconds are reported once each, with their owner and whether their fd
    read EOF and was closed, and listed again at the end.
    --comm and --cgroup keep the events of those processes (a transition's
    by its owner). --timewait prints the TIME_WAIT count of this network
    namespace (of the -P/-L/-D ports if given) every second: the state
    tracepoint never shows TIME_WAIT.
    Ctrl-C stops; the counts of events and drops go to stderr at the end.
    """
    if duration is not None and duration <= 0:
        raise click.BadParameter("give a positive number of seconds", param_hint="--duration")
    if stuck is not None and stuck < 0:
        raise click.BadParameter("give 0 or more seconds", param_hint="--stuck")
    need_root("tcplab watch", "the eBPF probes need it")
    try:
        filters = Filters(set(pids), set(lports), set(dports), set(ports))
        plan = make_plan()
        default = DEFAULT_PROBES + OWNER_PROBES + (INTERNALS if internals else ())
        if pids:  # follow the children
            default += ("proc",)
        wanted = list(names) or [n for n in plan.usable() if n in default]
        probes = ProbeSet(plan, wanted, filters)
    except ProbeError as e:
        raise click.ClickException(str(e)) from None
    t0 = time.monotonic_ns()
    out = sys.stdout
    pending: list[Event] = []
    owners = Owners()
    stuck_ns = None if stuck is None else int(stuck * 1e9)
    selector = Selector(comms, cgroup)
    follower = Follower(probes, filters)
    diag = DiagQuery() if timewait else None
    next_tw = time.monotonic()

    def show(probe: str, records: bytes) -> None:
        pending.extend(batch_events(make_body(probe, probes.layout(probe), records)))

    def flush(upto: int | None = None) -> None:
        """Print the events up to `upto` (ns; None: all), merged by time.

        Each probe has its own ring, drained one after the other: an event
        that reaches a ring just after that ring's drain waits for the next
        poll, while newer events in rings drained later come now (seen under
        load: a connect's exit after its socket's FIN_WAIT1, which then had
        no owner). What happened before the poll began is all in, whichever
        ring it took: newer events wait for the next poll, so that the
        owners are learned in time order.
        """
        pending.sort(key=ts_of)
        cut = len(pending) if upto is None else bisect.bisect_right(pending, upto, key=ts_of)
        batch = pending[:cut]
        del pending[:cut]
        owners.feed(batch)
        follower.feed(batch)
        if stuck_ns is not None:
            batch.extend(owners.newly_stuck(time.monotonic_ns(), stuck_ns))
        nonlocal next_tw
        if diag is not None and time.monotonic() >= next_tw:
            next_tw += INTERVAL_S
            count = timewait_count(diag, filters.ports | filters.lports | filters.rports)
            batch.append({"type": "timewait", "ts": time.monotonic_ns(), "count": count})
        for e in batch:
            if e["type"] != "timewait" and not (selector.keep(e) and follower.keep(e)):
                continue
            out.write((json.dumps(e) if as_json else _human(e, t0)) + "\n")
        out.flush()

    # Ctrl-C and SIGTERM only raise a flag, seen between polls: an exception
    # in the middle of printing would print the lines again at the end.
    stopped: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopped.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stats: dict[str, Any] = {}
    try:
        probes.start(show)
        # After attaching: a listener opened from now on shows its CLOSE -> LISTEN.
        owners.add_listeners(listening_owners())
        click.echo("attached: " + "; ".join(plan.describe(probes.probes)[1:]), err=True)
        end = None if duration is None else time.monotonic() + duration
        while not stopped and (end is None or time.monotonic() < end):
            began = time.monotonic_ns()
            probes.poll(0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))
            flush(began)
    except ProbeError as e:
        raise click.ClickException(str(e)) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if probes.probes:
            probes.drain_all()
            stats = probes.stats()
        probes.close()
        flush()
        if diag is not None:
            diag.close()
    if stuck_ns is not None:
        table = owners.stuck(time.monotonic_ns(), stuck_ns)
        table = [r for r in table if selector.keep(r) and follower.keep(r)]
        click.echo(f"stuck sockets at the end: {len(table)}", err=True)
        for r in table:
            click.echo(json.dumps({**r, "type": "stuck_at_end"}) if as_json else _stuck_line(r, t0))
    programs = stats.get("programs", {})
    total = sum(p["drops"] for p in programs.values())
    counts = ", ".join(f"{n} {p['events']} events {p['drops']} drops" for n, p in programs.items())
    click.echo(f"drops: {total} ({counts})", err=True)
