"""The BPF programs against the real kernel: real sockets, real events.

One ProbeSet is compiled and attached for the whole module (compiling takes
seconds); each test narrows it with filters and polls for the events it
expects with a deadline. accept and epoll never report the reading process
itself (see CFG_SELF_PID), so their workloads run in child processes.
Runs in tracepoint or kprobe mode as TCPLAB_ATTACH says; the expected TCP
transitions depend on the mode (the kprobe on tcp_set_state does not see
the states set by inet_sk_set_state/inet_sk_state_store).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bus.rawbatch import batch_events, decode_batch, make_body
from bus.records import TCP_STATES
from probes import program, ring
from probes.loader import Filters, ProbeSet
from probes.plan import DEFAULT_PROBES, make_plan

pytestmark = [pytest.mark.root, pytest.mark.bpf]

# Under software emulation (the 6.1 VM of `make test-kernels`, scripts/kernels/guest.sh)
# everything runs about 10x slower, BPF compilation most: guest.sh sets the factor.
SLOW = float(os.environ.get("TCPLAB_TEST_SLOW", "1"))
DEADLINE_S = 10.0 * SLOW
Event = dict[str, Any]


class Collector:
    """Every event the probes deliver, and a deadline-bounded wait for some."""

    def __init__(self, probes: ProbeSet) -> None:
        self.probes = probes
        self.events: list[Event] = []
        # The raw records as delivered, per probe, in order.
        self.raw: dict[str, list[bytes]] = {}

    def add(self, probe: str, records: bytes) -> None:
        self.raw.setdefault(probe, []).append(records)
        self.events += batch_events(make_body(probe, self.probes.layout(probe), records))

    def reset(self, filters: Filters) -> None:
        self.probes.set_filters(filters)
        self.probes.drain_all()
        self.events.clear()
        self.raw.clear()

    def wait(self, pred: Callable[[list[Event]], bool], what: str) -> list[Event]:
        deadline = time.monotonic() + DEADLINE_S
        while not pred(self.events):
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {DEADLINE_S}s; got {self.events[-20:]}")
            self.probes.poll(0.05)
        return self.events


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    plan = make_plan()
    # The probes this file is about (fdio keeps reporting the fds it tracked
    # before a filter was set, as tcp_state keeps its tracked sockets).
    probes = ProbeSet(plan, DEFAULT_PROBES)
    c = Collector(probes)
    probes.start(c.add)
    yield c
    probes.close()


def mode() -> str:
    return make_plan().probes["tcp_state"].mode or ""


def transitions(events: list[Event], skaddr: int) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in events if e["skaddr"] == skaddr]


CLIENT = [
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
]
# Measured on 6.18: the child is cloned from the listener, so its first
# transition starts from LISTEN, not CLOSE.
SERVER_CHILD = [
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
]
LISTENER = [("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")]
# tcp_set_state() never sees inet_sk_set_state()/inet_sk_state_store() calls.
NOT_VIA_TCP_SET_STATE = {("LISTEN", "SYN_RECV"), ("CLOSE", "LISTEN")}


def expected(seq: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if mode() == "kprobe":
        return [t for t in seq if t not in NOT_VIA_TCP_SET_STATE]
    return seq


def bound() -> tuple[socket.socket, int]:
    """A bound, not yet listening socket: its port is known before any transition."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    return srv, srv.getsockname()[1]


def closes(n: int) -> Callable[[list[Event]], bool]:
    return lambda evs: sum(e["type"] == "tcp_state" and e["new"] == "CLOSE" for e in evs) >= n


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


# A child process for the accept and epoll tests: prints "ready <info>", waits
# for "go" on stdin, does one thing, prints its result, exits.
WORKER = r"""
import ctypes, errno, os, resource, select, socket, sys
mode = sys.argv[1]
def say(*a):
    print(*a, flush=True)
if mode in ("accept", "accept6", "eagain", "emfile"):
    if mode == "accept6":
        srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
    else:
        srv = socket.create_server(("127.0.0.1", 0))
    say("ready", srv.getsockname()[1], srv.fileno())
    sys.stdin.readline()
    if mode == "eagain":
        srv.setblocking(False)
        try:
            srv.accept()
        except BlockingIOError:
            say("EAGAIN")
    elif mode == "emfile":
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        hold = []
        try:
            while True:
                hold.append(open("/dev/null"))
        except OSError as e:
            assert e.errno == errno.EMFILE
        try:
            srv.accept()
            say("accepted")
        except OSError as e:
            say(errno.errorcode[e.errno])
    else:
        conn, peer = srv.accept()
        say("accepted", conn.fileno(), peer[1])
elif mode == "epoll":
    n = int(sys.argv[2])
    pairs = [socket.socketpair() for _ in range(n)]
    ep = select.epoll()
    for a, _b in pairs:
        ep.register(a.fileno(), select.EPOLLIN)
    say("ready", ep.fileno())
    sys.stdin.readline()
    got = [len(ep.poll(0.2))]                # nothing ready: blocks the full 200 ms
    for _a, b in pairs[:3]:
        b.send(b"x")
    got.append(len(ep.poll(-1, 16)))         # 3 ready at once
    for _a, b in pairs[3:]:
        b.send(b"x")
    got.append(len(ep.poll(-1, 16)))         # all n ready
    say("done", *got)
elif mode == "pwait2":
    # Python's select.epoll has no epoll_pwait2 (5.11+): call it by number,
    # 441 on every architecture (syscalls added since 5.1 share numbers).
    libc = ctypes.CDLL(None, use_errno=True)
    a, b = socket.socketpair()
    ep = select.epoll()
    ep.register(a.fileno(), select.EPOLLIN)
    say("ready", ep.fileno())
    sys.stdin.readline()
    out = ctypes.create_string_buffer(16 * 16)  # room for 16 struct epoll_event
    timeout = (ctypes.c_long * 2)(0, 200_000_000)  # struct __kernel_timespec: 200 ms
    got = [libc.syscall(441, ep.fileno(), out, 16, timeout, None, 8)]
    b.send(b"x")
    got.append(libc.syscall(441, ep.fileno(), out, 16, None, None, 8))  # NULL: wait forever
    say("done", *got)
"""


class Worker:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.info = self.line().split()[1:]

    def line(self) -> str:
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline()
        if not out:
            pytest.fail(f"worker {self.pid} exited with {self.proc.wait(10)}")
        return out.strip()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close()


def accepts(pid: int) -> Callable[[list[Event]], bool]:
    return lambda evs: any(e["type"] == "accept" and e["pid"] == pid for e in evs)


def test_blocking_accept_returns_fd_and_peer(collector: Collector, workers: list[Worker]) -> None:
    """A blocking accept4 reports the listening fd, the new fd and the client's address."""
    w = Worker("accept")
    workers.append(w)
    port, lfd = int(w.info[0]), int(w.info[1])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    cli = socket.create_connection(("127.0.0.1", port))
    cport = cli.getsockname()[1]
    _, fd, peer_port = w.line().split()
    events = collector.wait(accepts(w.pid), "accept event")
    cli.close()
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["syscall"], e["lfd"], e["fd"], e["errno"]) == ("accept4", lfd, int(fd), 0)
    assert (e["family"], e["peer_addr"], e["peer_port"]) == (2, "127.0.0.1", cport)
    assert e["peer_port"] == int(peer_port)
    assert e["dur_ns"] > 0 and e["tid"] == w.pid


def test_accept_of_an_ipv6_peer_reports_its_address(
    collector: Collector, workers: list[Worker]
) -> None:
    """An accept on an IPv6 listener reports family 10 and the peer as "::1"."""
    w = Worker("accept6")
    workers.append(w)
    port = int(w.info[0])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    cli = socket.create_connection(("::1", port))
    cport = cli.getsockname()[1]
    _, fd, peer_port = w.line().split()
    events = collector.wait(accepts(w.pid), "accept event")
    cli.close()
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["fd"], e["errno"]) == (int(fd), 0)
    assert (e["family"], e["peer_addr"], e["peer_port"]) == (socket.AF_INET6, "::1", cport)
    assert int(peer_port) == cport


def test_nonblocking_accept_on_empty_queue_is_eagain(
    collector: Collector, workers: list[Worker]
) -> None:
    """Non-blocking I/O as strace shows it: accept4 on an empty queue returns EAGAIN at once."""
    w = Worker("eagain")
    workers.append(w)
    collector.reset(Filters(pids={w.pid}))
    w.go()
    assert w.line() == "EAGAIN"
    events = collector.wait(accepts(w.pid), "accept event")
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["fd"], e["errno"], e["family"], e["lfd"]) == (-1, errno.EAGAIN, 0, int(w.info[1]))


def test_accept_with_open_file_limit_exhausted_is_emfile(
    collector: Collector, workers: list[Worker]
) -> None:
    """A pending connection cannot be accepted by a process at RLIMIT_NOFILE: EMFILE."""
    w = Worker("emfile")
    workers.append(w)
    cli = socket.create_connection(("127.0.0.1", int(w.info[0])))  # queued in the backlog
    collector.reset(Filters(pids={w.pid}))
    w.go()
    assert w.line() == "EMFILE"
    events = collector.wait(accepts(w.pid), "accept event")
    cli.close()
    (e,) = [e for e in events if e["type"] == "accept"]
    assert (e["fd"], e["errno"]) == (-1, errno.EMFILE)


def test_pid_filter_keeps_other_processes_out(collector: Collector, workers: list[Worker]) -> None:
    """Only the filtered pid's accepts arrive, though both processes accept."""
    outside, inside = Worker("eagain"), Worker("eagain")
    workers += [outside, inside]
    collector.reset(Filters(pids={inside.pid}))
    outside.go()
    assert outside.line() == "EAGAIN"
    inside.go()
    assert inside.line() == "EAGAIN"
    events = collector.wait(accepts(inside.pid), "the inside pid's accept")
    assert {e["pid"] for e in events if e["type"] in ("accept", "epoll")} == {inside.pid}


def test_epoll_wait_reports_ready_counts_and_blocked_time(
    collector: Collector, workers: list[Worker]
) -> None:
    """epoll_wait on 5 sockets: a 200 ms timeout with 0 ready, then 3, then 5 ready."""
    n = 5
    w = Worker("epoll", str(n))
    workers.append(w)
    epfd = int(w.info[0])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    assert w.line() == "done 0 3 5"

    def three_calls(evs: list[Event]) -> bool:
        return sum(e["type"] == "epoll" and e["pid"] == w.pid for e in evs) >= 3

    events = collector.wait(three_calls, "three epoll calls")
    calls = [e for e in events if e["type"] == "epoll" and e["epfd"] == epfd]
    assert [(e["ready"], e["timeout_ms"], e["errno"]) for e in calls] == [
        (0, 200, 0),
        (3, -1, 0),
        (n, -1, 0),
    ]
    assert [e["maxevents"] for e in calls][1:] == [16, 16]
    # The kernel never returns from a timed-out wait before its timeout.
    assert calls[0]["dur_ns"] >= 200_000_000
    assert all(e["syscall"] in ("epoll_wait", "epoll_pwait") for e in calls)

    (hist,) = [h for h in collector.probes.epoll_histograms() if h["pid"] == w.pid]
    # log2 slots: 0 -> slot 0, 3 -> slot 2 ([2, 4)), 5 -> slot 3 ([4, 8)).
    assert hist["ready_log2"] == [1, 0, 1, 1]
    # Slot i counts [2^(i-1), 2^i), which is int.bit_length(); each call's time
    # is in the slot of its own dur_ns, however long the scheduler kept it.
    slots = Counter(e["dur_ns"].bit_length() for e in calls)
    assert {i: n for i, n in enumerate(hist["blocked_ns_log2"]) if n} == dict(slots)
    # The timed-out call blocked at least 200 ms >= 2^27 ns: slot 28 or above.
    assert calls[0]["dur_ns"].bit_length() >= 28


def test_epoll_pwait2_is_seen_with_its_timespec_timeout(
    collector: Collector, workers: list[Worker]
) -> None:
    """epoll_pwait2 (5.11+) by syscall number: a 200 ms timespec timeout with
    nothing ready, then a NULL timeout (forever) returning the one ready socket."""
    w = Worker("pwait2")
    workers.append(w)
    epfd = int(w.info[0])
    collector.reset(Filters(pids={w.pid}))
    w.go()
    assert w.line() == "done 0 1"

    def two_calls(evs: list[Event]) -> bool:
        return sum(e["type"] == "epoll" and e["pid"] == w.pid for e in evs) >= 2

    events = collector.wait(two_calls, "two epoll_pwait2 calls")
    calls = [e for e in events if e["type"] == "epoll" and e["epfd"] == epfd]
    assert [(e["syscall"], e["ready"], e["timeout_ms"], e["errno"]) for e in calls] == [
        ("epoll_pwait2", 0, 200, 0),
        ("epoll_pwait2", 1, -1, 0),
    ]
    assert calls[0]["dur_ns"] >= 200_000_000


def test_epoll_aggregate_only_keeps_histograms_and_stops_per_call_events(
    collector: Collector, workers: list[Worker]
) -> None:
    """In aggregate-only mode calls are counted in the kernel but not streamed."""
    w = Worker("epoll", "4")
    workers.append(w)
    collector.reset(Filters(pids={w.pid}))
    collector.probes.set_epoll_aggregate_only(True)
    try:
        w.go()
        assert w.line() == "done 0 3 4"

        def counted() -> int:
            hists = [h for h in collector.probes.epoll_histograms() if h["pid"] == w.pid]
            return sum(hists[0]["ready_log2"]) if hists else 0

        deadline = time.monotonic() + DEADLINE_S
        while counted() < 3 and time.monotonic() < deadline:
            collector.probes.poll(0.05)
        assert counted() == 3
        collector.probes.drain_all()
        assert [e for e in collector.events if e["type"] == "epoll"] == []
    finally:
        collector.probes.set_epoll_aggregate_only(False)


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


def _text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


def _state(n: int) -> str:
    return TCP_STATES[n] if n < len(TCP_STATES) else str(n)


# The reference: bus/records.py's shapes read field by field, by name, from
# the ctypes object bcc's own table.event() makes of a record.
REFERENCE: dict[str, Callable[[Any], Event]] = {
    "tcp_state": lambda e: {
        "type": "tcp_state",
        "ts": e.ts,
        "skaddr": e.skaddr,
        "cpu_pid": e.pid,
        "cpu_tid": e.tid,
        "cpu_comm": e.comm.decode(errors="replace"),
        "family": e.family,
        "saddr": _text(e.family, bytes(e.saddr)),
        "sport": e.sport,
        "daddr": _text(e.family, bytes(e.daddr)),
        "dport": e.dport,
        "old": _state(e.oldstate),
        "new": _state(e.newstate),
    },
    "accept": lambda e: {
        "type": "accept",
        "ts": e.ts,
        "pid": e.pid,
        "tid": e.tid,
        "comm": e.comm.decode(errors="replace"),
        "syscall": ("accept", "accept4")[e.syscall],
        "lfd": e.lfd,
        "fd": e.fd,
        "errno": e.err,
        "family": e.family,
        "peer_addr": _text(e.family, bytes(e.peer_addr)),
        "peer_port": e.peer_port,
        "dur_ns": e.dur_ns,
    },
    "epoll": lambda e: {
        "type": "epoll",
        "ts": e.ts,
        "pid": e.pid,
        "tid": e.tid,
        "comm": e.comm.decode(errors="replace"),
        "syscall": ("epoll_wait", "epoll_pwait", "epoll_pwait2")[e.syscall],
        "epfd": e.epfd,
        "maxevents": e.maxevents,
        "timeout_ms": e.timeout_ms,
        "ready": e.ready,
        "errno": e.err,
        "dur_ns": e.dur_ns,
    },
}


def test_raw_decoding_gives_exactly_what_bccs_own_decoding_gives(
    collector: Collector, workers: list[Worker]
) -> None:
    """Every raw record the probes delivered is decoded again one by one through
    bcc's table.event(): the numpy columns equal the ctypes fields, and the
    dicts equal bus/records.py's shapes read from those fields. IPv4 and IPv6
    transitions, accept4 with a peer and with EAGAIN, epoll waits, and whatever
    else the machine does meanwhile."""
    from bcc.table import _get_event_class  # what table.event() decodes with

    probes = collector.probes.probes
    accepting, eagain, waiting = Worker("accept"), Worker("eagain"), Worker("epoll", "3")
    workers += [accepting, eagain, waiting]
    v6_transitions = len(expected(CLIENT + SERVER_CHILD + LISTENER))
    collector.reset(Filters())

    for w in (accepting, eagain, waiting):
        w.go()
    cli = socket.create_connection(("127.0.0.1", int(accepting.info[0])))
    assert accepting.line().startswith("accepted")
    assert eagain.line() == "EAGAIN"
    assert waiting.line() == "done 0 3 3"
    cli.close()
    srv6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    cli6 = socket.create_connection(("::1", srv6.getsockname()[1]))
    child6, _ = srv6.accept()
    cli6.close()
    assert child6.recv(1) == b""  # no simultaneous close: the transitions are fixed
    child6.close()
    srv6.close()

    def everything(evs: list[Event]) -> bool:
        return (
            sum(e["type"] == "accept" and e["pid"] in (accepting.pid, eagain.pid) for e in evs) >= 2
            and sum(e["type"] == "epoll" and e["pid"] == waiting.pid for e in evs) >= 3
            and sum(e["type"] == "tcp_state" and e["family"] == 10 for e in evs) >= v6_transitions
        )

    collector.wait(everything, "accepts, epoll waits and an IPv6 connection's transitions")
    collector.probes.drain_all()

    for name, p in probes.items():
        table = p.bpf[b"events"]
        cls = _get_event_class(table)
        size = ctypes.sizeof(cls)
        reference, columns = [], []
        for raw in collector.raw.get(name, []):
            assert len(raw) % size == 0
            buf = ctypes.create_string_buffer(raw, len(raw))
            records = decode_batch(make_body(name, p.layout, raw))
            assert len(records) == len(raw) // size
            for i in range(len(records)):
                e = table.event(ctypes.addressof(buf) + i * size)
                reference.append(REFERENCE[name](e))
                for field, ctype in cls._fields_:
                    want = getattr(e, field)
                    got = records[field][i]
                    if issubclass(ctype, ctypes.Array):
                        want, got = bytes(want), bytes(got)
                    columns.append((field, got == want, want))
        assert [c for c in columns if not c[1]] == []
        actual = [e for e in collector.events if e["type"] == name]
        assert reference == actual
    assert {e["family"] for e in collector.events if e["type"] == "tcp_state"} >= {2, 10}
    assert {e["syscall"] for e in collector.events if e["type"] == "accept"} >= {"accept4"}
