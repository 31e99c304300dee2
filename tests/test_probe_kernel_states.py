"""The tcp_state probe against the real kernel: the transitions of real
connections on both sides, the port filter, its counters and its ring buffer.
"""

from __future__ import annotations

import socket
from collections import Counter

import pytest
from probe_kernel_harness import (
    CLIENT,
    LISTENER,
    SERVER_CHILD,
    Collector,
    bound,
    closes,
    expected,
    transitions,
)

from probes import program, ring
from probes.loader import Filters, ProbeSet
from probes.plan import make_plan

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def test_one_connection_yields_the_expected_transitions_on_both_sides(collector: Collector) -> None:
    """Client, server child and listener each show exactly their transitions, in order."""
    srv, port = bound()
    collector.reset(Filters(ports={port}))
    srv.listen()
    cli = socket.create_connection(("127.0.0.1", port))
    cport = cli.getsockname()[1]
    child, _ = srv.accept()
    cli.close()
    assert child.recv(1) == b""  # the FIN arrived: the child is in CLOSE_WAIT
    child.close()
    srv.close()

    # Only state events: syscall events read from the rings before the reset
    # may still come in, and they have no socket.
    seen = collector.wait(closes(3), "the closes of client, child and listener")
    ours = [e for e in seen if e["type"] == "tcp_state"]
    client = next(e["skaddr"] for e in ours if e["sport"] == cport)
    server = next(e["skaddr"] for e in ours if e["sport"] == port and e["dport"] == cport)
    listener = next(e["skaddr"] for e in ours if e["sport"] == port and e["dport"] == 0)

    assert transitions(ours, client) == expected(CLIENT)
    assert transitions(ours, server) == expected(SERVER_CHILD)
    assert transitions(ours, listener) == expected(LISTENER)
    assert len(ours) == len(expected(CLIENT + SERVER_CHILD + LISTENER))
    first = next(e for e in ours if e["skaddr"] == client)
    # tcp_v4_connect sets SYN_SENT before choosing the ephemeral port.
    assert (first["new"], first["sport"], first["dport"]) == ("SYN_SENT", 0, port)
    assert {e["saddr"] for e in ours} == {"127.0.0.1"}
    assert {e["daddr"] for e in ours if e["dport"]} == {"127.0.0.1"}
    assert {e["family"] for e in ours} == {socket.AF_INET}


def test_ipv6_addresses_come_out_as_text(collector: Collector) -> None:
    """An IPv6 loopback connection reports family 10 and "::1"."""
    srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = srv.getsockname()[1]
    collector.reset(Filters(ports={port}))
    cli = socket.create_connection(("::1", port))
    child, _ = srv.accept()
    events = collector.wait(
        lambda evs: sum(e["new"] == "ESTABLISHED" for e in evs) >= 2, "two ESTABLISHED"
    )
    for s in (cli, child, srv):
        s.close()
    est = [e for e in events if e["new"] == "ESTABLISHED"]
    assert {(e["family"], e["saddr"], e["daddr"]) for e in est} == {(10, "::1", "::1")}


def test_port_filter_keeps_other_ports_out(collector: Collector) -> None:
    """With a port filter, a connection on another port yields no event at all."""
    other = socket.create_server(("127.0.0.1", 0))
    wanted, wport = bound()
    oport = other.getsockname()[1]
    collector.reset(Filters(ports={wport}))
    wanted.listen()
    for srv, port in ((other, oport), (wanted, wport)):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = srv.accept()
        c.close()
        s.close()
    # The ring buffer is ordered: once the later connection's closes are in,
    # the earlier connection's would be too.
    events = collector.wait(closes(2), "the wanted port's closes")
    other.close()
    wanted.close()
    assert not [e for e in events if oport in (e["sport"], e["dport"])]
    assert all(wport in (e["sport"], e["dport"]) for e in events)


def test_counters_count_every_event_and_no_drops(collector: Collector) -> None:
    """What the kernel says it submitted is exactly what reached user space."""
    srv, port = bound()
    collector.reset(Filters(ports={port}))
    before = collector.probes.stats()["programs"]["tcp_state"]
    srv.listen()
    for _ in range(50):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = srv.accept()
        c.close()
        # The FIN is in before the child closes: a child closing first (seen
        # under emulation, where loopback delivery can lag) closes
        # simultaneously, through other states.
        assert s.recv(1) == b""
        s.close()
    srv.close()
    collector.wait(closes(101), "every close")
    # Port filters alone keep accept and epoll quiet.
    assert {e["type"] for e in collector.events} == {"tcp_state"}
    events = collector.events
    after = collector.probes.stats()["programs"]["tcp_state"]
    per_conn, per_listener = len(expected(CLIENT + SERVER_CHILD)), len(expected(LISTENER))
    assert after["events"] - before["events"] == len(events) == 50 * per_conn + per_listener
    assert after["drops"] == before["drops"]
    # The documented size (docs/probes.md, README): 32 MiB for tcp_state.
    assert after["ring_size"] == 32 << 20


def test_ring_wraps_around_without_losing_or_garbling_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More than a ring's worth of records read back complete and in order, in
    reads capped below the ring's size. A ring of its own, 1 MiB (the real one,
    32 MiB, would take 40k connections to wrap) read 256 KiB at a time."""
    monkeypatch.setitem(program.RING_PAGES, "tcp_state", 256)
    monkeypatch.setattr(ring, "READ_MAX_BYTES", 256 << 10)
    srv, port = bound()
    probes = ProbeSet(make_plan(), ["tcp_state"], Filters(ports={port}))
    collector = Collector(probes)
    try:
        probes.start(collector.add)
        srv.listen(1024)
        # x 10 events x 88 bytes = 1.3 MB > 1 MiB (x 9 in kprobe mode: 1.2 MB). A
        # poll every 300 connections (264 KB) reads more than one capped read
        # can take, and keeps the ring from filling up.
        n = 1500
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = srv.accept()
            c.close()
            assert s.recv(1) == b""  # as in test_counters: no simultaneous close
            s.close()
            if i % 300 == 0:
                probes.poll(0)
        srv.close()
        events = collector.wait(closes(2 * n + 1), "every close")
        stats = probes.stats()["programs"]["tcp_state"]
    finally:
        probes.close()
    assert stats["ring_size"] == 256 * 4096
    assert {e["type"] for e in events} == {"tcp_state"}
    assert stats["drops"] == 0
    per_conn, per_listener = len(expected(CLIENT + SERVER_CHILD)), len(expected(LISTENER))
    assert len(events) == stats["events"] == per_conn * n + per_listener
    # Every lifecycle whole: each transition of a connection n times, the
    # listener's once (addresses of freed sockets are reused, so count them).
    lifecycles = Counter(expected(CLIENT + SERVER_CHILD) * n + expected(LISTENER))
    assert Counter((e["old"], e["new"]) for e in events) == lifecycles
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
