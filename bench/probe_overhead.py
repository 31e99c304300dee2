"""Observation overhead of the probes: the bomber with every probe attached
and streaming to a hub vs the bomber alone, in pairs, to the C server on
127.0.0.1.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.cpu import cpu_note, cpu_row
from bench.pairs import Row, median, paired
from bench.probe_session import ProbeSession
from bench.procs import bomber_argv, bomber_cpu_us, bomber_rate, c_server, gated, release
from bench.rates import BomberFigures, run_bomber


def bomber_with_probes(server_pid: int, port: int, count: int, fig: BomberFigures) -> float:
    """One bomber run with every probe attached and streaming to a hub here."""
    sess = ProbeSession(port)
    try:
        bomber = gated(bomber_argv(port, count), stderr=subprocess.PIPE)
        # The lab's filter: the port, then the pids of its processes.
        sess.set_pids([server_pid, bomber.pid])
        sess.settle()
        before = sum(sess.received.values())
        release(bomber)
        sess.run_while([bomber])
        assert bomber.stderr is not None
        err = bomber.stderr.read().decode(errors="replace")
        rate = bomber_rate(err)
        fig.cpu.setdefault("with_probes", []).append(bomber_cpu_us(err, count))
        sess.settle()
        events = sum(sess.received.values()) - before
    finally:
        loss = sess.close()
        fig.loss.add(loss)
    # What the kernel produced: received plus dropped (the only load on the
    # probes' port and pids is this bomber), over the bomber's own time span.
    produced = events + loss.drops
    fig.event_rates.append(produced / (count / rate))
    fig.events_per_conn.append(produced / count)
    return rate


def probe_overhead(
    exe: Path, port: int, count: int, rounds: int, extra: int, fig: BomberFigures
) -> list[Row]:
    """The bomber with the probes attached vs without, in pairs: rates and the
    bomber's own CPU (the tracepoints run in its syscalls)."""
    without_cpu = fig.cpu.setdefault("without_probes", [])
    with c_server(exe, port) as srv:
        runs = paired(lambda: bomber_with_probes(srv.pid, port, count, fig),
                      lambda: run_bomber(port, count, without_cpu), rounds, extra)  # fmt: skip
    fig.with_probes += runs.value
    rate = runs.row(
        "probe_overhead",
        "Observation overhead",
        "bomber with probes attached (python -m probes -> bus -> hub) / without",
        "conn/s",
        "without probes",
        ("with", "without"),
        goal=">= 0.95",
        note=(
            f"{median(fig.events_per_conn):.1f} kernel events per connection, "
            f"{median(fig.event_rates):,.0f} events/s; the bomber's own "
            + cpu_note("with", fig.cpu["with_probes"], "without", without_cpu, runs.window)
        ),
    )
    cpu = cpu_row(
        "probe_overhead_cpu",
        "Observation overhead",
        "the bomber's own CPU per connection with probes attached vs without (the same pairs)",
        fig.cpu["with_probes"],
        without_cpu,
        "without probes",
        runs.window,
    )
    return [rate, cpu]
