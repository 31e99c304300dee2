"""`tcplab doctor` and `tcplab watch`.

bcc is only imported once a command runs (inside probes.loader), so that
`tcplab --help` works on a machine without it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType
from typing import Any

import click

from bus.rawbatch import batch_events, make_body
from lab.exitcodes import need_root
from probes.loader import Filters, ProbeSet
from probes.plan import DEFAULT_PROBES, INTERNALS, PROBES, ProbeError, make_plan

Event = dict[str, Any]


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
            f"on-cpu={e['cpu_pid']}/{e['cpu_comm']}"
        )
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
        detail = {
            "cong_state": e["cong_state"],
            "sk_error": _errname(e["code"]),
            "retransmit": f"state {e['state']}" + (f" err {e['code']}" if e["code"] else ""),
        }.get(e["what"], f"state {e['state']}")
        return (
            f"{t} {e['what']:<13} {e['saddr']}:{e['sport']} -> {e['daddr']}:{e['dport']}  {detail}"
        )
    result = f"{e['ready']} ready" if e["errno"] == 0 else _errname(e["errno"])
    return (
        f"{t} {e['syscall']:<6} pid={e['pid']}/{e['comm']} epfd={e['epfd']} "
        f"max={e['maxevents']} timeout={e['timeout_ms']}ms -> {result} "
        f"after {e['dur_ns'] / 1e6:.3f} ms"
    )


def _errname(n: int) -> str:
    import errno

    return errno.errorcode.get(n, f"errno {n}")


@click.command()
@click.option("-p", "--pid", "pids", type=int, multiple=True, help="only this process")
@click.option("-P", "--port", "ports", type=int, multiple=True, help="local or remote port")
@click.option("-L", "--lport", "lports", type=int, multiple=True, help="local port")
@click.option("-D", "--dport", "dports", type=int, multiple=True, help="remote port")
@click.option("--probe", "names", type=click.Choice(PROBES), multiple=True, help="only this probe")
@click.option(
    "--internals", is_flag=True, help="also the TCP internals: cwnd, windows, retransmits, resets"
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text")
@click.option("--duration", type=float, default=None, help="stop after S seconds")
def watch(
    pids: tuple[int, ...],
    ports: tuple[int, ...],
    lports: tuple[int, ...],
    dports: tuple[int, ...],
    names: tuple[str, ...],
    internals: bool,
    as_json: bool,
    duration: float | None,
) -> None:
    """Run the probes alone against any process and print kernel events.

    Ports filter TCP state changes; pids filter all three probes (with
    ports but no pid, accept and epoll stay quiet: they have no ports).
    Ctrl-C stops; the counts of events and drops go to stderr at the end.
    """
    if duration is not None and duration <= 0:
        raise click.BadParameter("give a positive number of seconds", param_hint="--duration")
    need_root("tcplab watch", "the eBPF probes need it")
    try:
        filters = Filters(set(pids), set(lports), set(dports), set(ports))
        plan = make_plan()
        default = DEFAULT_PROBES + (INTERNALS if internals else ())
        wanted = list(names) or [n for n in plan.usable() if n in default]
        probes = ProbeSet(plan, wanted, filters)
    except ProbeError as e:
        raise click.ClickException(str(e)) from None
    t0 = time.monotonic_ns()
    out = sys.stdout
    pending: list[Event] = []

    def show(probe: str, records: bytes) -> None:
        pending.extend(batch_events(make_body(probe, probes.layout(probe), records)))

    def flush() -> None:
        # Each probe has its own ring: merge what one poll brought by time.
        pending.sort(key=lambda e: e["ts"])
        for e in pending:
            out.write((json.dumps(e) if as_json else _human(e, t0)) + "\n")
        pending.clear()
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
        click.echo("attached: " + "; ".join(plan.describe()[1:]), err=True)
        end = None if duration is None else time.monotonic() + duration
        while not stopped and (end is None or time.monotonic() < end):
            probes.poll(0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))
            flush()
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
    programs = stats.get("programs", {})
    total = sum(p["drops"] for p in programs.values())
    counts = ", ".join(f"{n} {p['events']} events {p['drops']} drops" for n, p in programs.items())
    click.echo(f"drops: {total} ({counts})", err=True)
