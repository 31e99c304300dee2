"""`python -m probes` end to end: a real Hub here, the probe process as a child,
real ZeroMQ over ipc://, real eBPF in the child."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import SLOW

from bus.endpoints import Endpoints
from bus.hub import Hub
from bus.rawconvert import batch_events
from bus.schema import Envelope, Kind
from bus.transport import Channel

pytestmark = [pytest.mark.root, pytest.mark.bpf]

# Compiling three programs takes a few seconds on 2 cores here, minutes emulated.
DEADLINE_S = 30.0 * SLOW
OUR_PROGRAMS = ("tp_", "kp_")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def bpf_programs() -> dict[int, str]:
    out = subprocess.run(
        ["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["id"]: p.get("name", "") for p in json.loads(out or "[]")}


def held_programs(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds a file descriptor of."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for f in fdinfo.iterdir():
        try:
            text = f.read_text()
        except OSError:  # closed meanwhile
            continue
        ids |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    return ids


def start_probes(
    procs: list[subprocess.Popen[bytes]], ep: Endpoints, name: str, *extra: str
) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [sys.executable, "-m", "probes", *ep.as_args(), "--name", name, "--quiet", *extra]
    )
    procs.append(p)
    return p


def collect(hub: Hub, until: Callable[[list[Envelope]], bool], what: str) -> list[Envelope]:
    got: list[Envelope] = []
    deadline = time.monotonic() + DEADLINE_S
    while not until(got):
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_S}s; got {[e.kind for e in got][-20:]}")
        got += [env for ch, env in hub.poll(100) if ch is Channel.EVENTS]
    return got


def kernel_events(envs: list[Envelope], sender: str, probe: str) -> list[dict[str, Any]]:
    """The events of `sender`'s raw batches of `probe`, decoded as a consumer does."""
    return [
        ev
        for env in envs
        if env.kind is Kind.KERNEL_RAW and env.sender == sender and env.body["probe"] == probe
        for ev in batch_events(env.body)
    ]


def connect_once(port_holder: socket.socket) -> None:
    port = port_holder.getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = port_holder.accept()
    c.close()
    s.close()


def test_probe_process_streams_kernel_batches_stats_and_eof(
    hub: Hub, endpoints: Endpoints, procs: list[subprocess.Popen[bytes]]
) -> None:
    """hello -> ready once attached; KERNEL_RAW batches and STATS flow; SIGTERM
    detaches every program, ships EOF, and leaves nothing loaded."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    p = start_probes(procs, endpoints, "probes", "--port", str(port))
    hub.wait_ready(["probes"], DEADLINE_S)
    # The programs this process holds (others may load programs meanwhile).
    held = held_programs(p.pid)
    ours = {i: n for i, n in bpf_programs().items() if i in held}
    assert ours and all(n.startswith(OUR_PROGRAMS) for n in ours.values())

    connect_once(srv)

    def have_closes(envs: list[Envelope]) -> bool:
        evs = kernel_events(envs, "probes", "tcp_state")
        return sum(e["new"] == "CLOSE" for e in evs) >= 2

    envs = collect(hub, have_closes, "tcp_state batch with both closes")
    envs += collect(hub, lambda es: any(e.kind is Kind.STATS for e in es), "STATS from the probes")
    evs = kernel_events(envs, "probes", "tcp_state")
    assert all(port in (e["sport"], e["dport"]) for e in evs)
    assert set(evs[0]) == {
        "type", "ts", "skaddr", "cpu_pid", "cpu_tid", "cpu_comm", "family",
        "saddr", "sport", "daddr", "dport", "old", "new",
    }  # fmt: skip
    # Raw records only, each batch carrying events.h's struct tcp_state_event.
    assert not [e for e in envs if e.kind is Kind.KERNEL]
    batch = next(
        e.body for e in envs if e.kind is Kind.KERNEL_RAW and e.body["probe"] == "tcp_state"
    )
    assert batch["layout"]["names"] == [
        "ts", "skaddr", "pid", "tid", "comm", "family", "sport", "dport", "oldstate", "newstate",
        "saddr", "daddr",
    ]  # fmt: skip
    assert batch["layout"]["itemsize"] == 80 and len(batch["records"]) % 80 == 0
    stats = next(e for e in envs if e.kind is Kind.STATS).body
    assert stats["source"] == "probes"
    assert set(stats["programs"]) == {"tcp_state", "accept", "epoll"}
    assert stats["programs"]["tcp_state"]["drops"] == 0
    assert isinstance(stats["epoll_hist"], list)

    p.send_signal(signal.SIGTERM)
    collect(hub, lambda es: any(e.kind is Kind.EOF for e in es), "EOF")
    assert p.wait(timeout=DEADLINE_S) == 0
    assert hub.events_ledger.complete("probes")
    assert not set(ours) & set(bpf_programs()), "programs still loaded after SIGTERM"
    srv.close()


def test_set_command_changes_filters_while_running(
    hub: Hub, endpoints: Endpoints, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A `set` command moves the port filter: the old port goes quiet, the new one streams."""
    first = socket.create_server(("127.0.0.1", 0))
    second = socket.create_server(("127.0.0.1", 0))
    p1, p2 = first.getsockname()[1], second.getsockname()[1]
    start_probes(procs, endpoints, "probes", "--port", str(p1), "--probe", "tcp_state")
    hub.wait_ready(["probes"], DEADLINE_S)
    ack = hub.command("probes", "set", {"ports": [p2]})
    assert ack.body["ok"] and ack.body["result"]["filters"]["ports"] == [p2]
    bad = hub.command("probes", "set", {"ports": ["http"]})
    assert not bad.body["ok"] and "list of integers" in bad.body["error"]

    connect_once(first)
    connect_once(second)
    envs = collect(
        hub,
        lambda es: sum(e["new"] == "CLOSE" for e in kernel_events(es, "probes", "tcp_state")) >= 2,
        "the second port's closes",
    )
    evs = kernel_events(envs, "probes", "tcp_state")
    assert evs and all(p2 in (e["sport"], e["dport"]) for e in evs)
    hub.command("probes", "stop")
    collect(hub, lambda es: any(e.kind is Kind.EOF for e in es), "EOF")
    first.close()
    second.close()


def test_a_second_probe_process_does_not_disturb_the_first(
    hub: Hub, endpoints: Endpoints, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Two probe processes each get every event; stopping one leaves the other working."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    args = ("--port", str(port), "--probe", "tcp_state")
    start_probes(procs, endpoints, "probes-a", *args)
    b = start_probes(procs, endpoints, "probes-b", *args)
    hub.wait_ready(["probes-a", "probes-b"], DEADLINE_S)

    connect_once(srv)

    def both_closed(envs: list[Envelope]) -> bool:
        return all(
            sum(e["new"] == "CLOSE" for e in kernel_events(envs, s, "tcp_state")) >= 2
            for s in ("probes-a", "probes-b")
        )

    envs = collect(hub, both_closed, "the connection in both probe processes")
    a_events = kernel_events(envs, "probes-a", "tcp_state")

    def untimed(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Each program stamps its own bpf_ktime_get_ns(): ts differs by design.
        return [{k: v for k, v in e.items() if k != "ts"} for e in evs]

    assert untimed(a_events) == untimed(kernel_events(envs, "probes-b", "tcp_state"))

    b.send_signal(signal.SIGTERM)
    assert b.wait(timeout=DEADLINE_S) == 0
    connect_once(srv)
    envs = collect(
        hub,
        lambda es: (
            sum(e["new"] == "CLOSE" for e in kernel_events(es, "probes-a", "tcp_state")) >= 2
        ),
        "the second connection in the remaining probe process",
    )
    assert len(kernel_events(envs, "probes-a", "tcp_state")) == len(a_events)
    srv.close()


def test_probe_process_without_bus_says_what_to_do() -> None:
    """Run without --events/--control: one line that points to `tcplab watch`."""
    r = subprocess.run([sys.executable, "-m", "probes"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "python -m probes: error: python -m probes talks to the orchestrator: give --events "
        "and --control (to watch events in a terminal use `tcplab watch`)"
    ]
