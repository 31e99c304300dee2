"""What the tests of the BPF programs against the real kernel share
(tests/test_probe_kernel_*.py): the collector of delivered events, the
transitions the kernel reports, and a worker process for accept and epoll.

One ProbeSet is compiled and attached per test module (the `collector`
fixture in conftest.py: compiling takes seconds); each test narrows it with
filters and polls for the events it expects with a deadline. accept and
epoll never report the reading process itself (see CFG_SELF_PID), so their
workloads run in child processes (Worker). Runs in tracepoint or kprobe
mode as TCPLAB_ATTACH says; the expected TCP transitions depend on the mode
(the kprobe on tcp_set_state does not see the states set by
inet_sk_set_state/inet_sk_state_store). A test helper, not part of the product.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from lab_helpers import SLOW

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from probes.loader import Filters, ProbeSet
from probes.plan import make_plan

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


def accepts(pid: int) -> Callable[[list[Event]], bool]:
    return lambda evs: any(e["type"] == "accept" and e["pid"] == pid for e in evs)
