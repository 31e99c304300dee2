"""The connect probe and the syscall barrier (fdio) on real sockets, real eBPF.

This process traces itself (exclude_self=False, a pid filter on its own
pid): what it does to its sockets is what the probes must report.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import SLOW

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from probes.loader import Filters, ProbeSet
from probes.plan import make_plan

pytestmark = [pytest.mark.root, pytest.mark.bpf]
DEADLINE_S = 20.0 * SLOW
BULK = 4 << 20


class Traced:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ps = ProbeSet(
            make_plan(), ["tcp_state", "connect", "fdio"], Filters(pids={os.getpid()}),
            exclude_self=False,
        )  # fmt: skip
        self.ps.start(self._take)

    def _take(self, probe: str, records: bytes) -> None:
        self.events += batch_events(make_body(probe, self.ps.layout(probe), records))

    def until(self, pred: Any, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            self.ps.poll(0.05)
            found = [e for e in self.events if pred(e)]
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} in {DEADLINE_S} s: {self.events[-20:]}")


@pytest.fixture(scope="module")
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.ps.close()


def test_connect_names_owner_fd_socket_and_errno(traced: Traced) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    c = socket.socket()
    c.setblocking(False)
    assert c.connect_ex(("127.0.0.1", port)) == errno.EINPROGRESS
    fd = c.fileno()
    (ev,) = traced.until(
        lambda e: e["type"] == "connect" and e["fd"] == fd and e["dport"] == port, "connect"
    )
    assert (ev["pid"], ev["errno"], ev["daddr"]) == (os.getpid(), errno.EINPROGRESS, "127.0.0.1")
    # The skaddr is the socket whose CLOSE -> SYN_SENT ran inside the call, on this thread.
    (syn,) = traced.until(
        lambda e: (
            e["type"] == "tcp_state" and e["skaddr"] == ev["skaddr"] and e["new"] == "SYN_SENT"
        ),
        "SYN_SENT of that socket",
    )
    assert syn["cpu_tid"] == ev["tid"] and ev["ts"] - ev["dur_ns"] <= syn["ts"] <= ev["ts"]
    srv.close()
    c.close()
    # A closed port: the call itself fails with ECONNREFUSED.
    r = socket.socket()
    assert r.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
    rfd = r.fileno()
    refused = traced.until(
        lambda e: e["type"] == "connect" and e["fd"] == rfd and e["errno"] == errno.ECONNREFUSED,
        "refused connect",
    )
    assert refused[-1]["skaddr"] != 0
    r.close()


def test_the_barrier_counts_in_the_kernel_and_reports_eof_close_errors(traced: Traced) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        a.recv(10)  # EAGAIN: nothing sent yet
    chunk = b"x" * 65536
    for _ in range(BULK // len(chunk)):
        c.sendall(chunk)
        got = 0
        while got < len(chunk):
            try:
                got += len(a.recv(len(chunk)))
            except BlockingIOError:
                time.sleep(0.001)
    c.close()
    a.setblocking(True)
    assert a.recv(10) == b""  # EOF
    afd = a.fileno()
    a.close()
    mine = traced.until(
        lambda e: e["type"] == "fdio" and e["fd"] == afd and e["what"] == "close", "close"
    )
    close = mine[-1]
    assert close["how"] == "accept" and close["read_bytes"] == BULK
    assert close["reads"] >= BULK // 65536 and close["eagain_reads"] >= 1
    assert close["eof_ts"] and close["opened_ts"] < close["eof_ts"] < close["ts"]
    # Hundreds of reads, two events: the EOF and the close (none per read).
    sk_events = [e for e in traced.events if e["type"] == "fdio" and e["skaddr"] == close["skaddr"]]
    assert [e["what"] for e in sk_events if e["pid"] == os.getpid() and e["fd"] == afd] == [
        "eof", "close",
    ]  # fmt: skip
    # An error: the peer resets (SO_LINGER 0), the next send fails.
    c2 = socket.create_connection(srv.getsockname())
    a2, _ = srv.accept()
    c2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c2.close()
    with pytest.raises(OSError) as failed:
        for _ in range(100):
            a2.send(b"y")
            time.sleep(0.01)
    a2fd = a2.fileno()
    (err,) = traced.until(
        lambda e: e["type"] == "fdio" and e["fd"] == a2fd and e["what"] == "error", "error"
    )
    assert err["errno"] == failed.value.errno and err["syscall"] == "sendto"
    a2.close()
    srv.close()


@pytest.mark.netns
def test_connect_reports_eaddrnotavail_when_the_ports_run_out(traced: Traced) -> None:
    """A namespace with two ephemeral ports and no TIME_WAIT reuse: the third
    connect finds none free, and the probe says EADDRNOTAVAIL."""
    from pyroute2 import netns

    from lab.netns import LabNamespace

    ns = LabNamespace(
        "byo-ports",
        {"net.ipv4.ip_local_port_range": [40000, 40001], "net.ipv4.tcp_tw_reuse": 0},
    ).create()
    try:
        netns.pushns(ns.name)  # sockets made now belong to the namespace
        try:
            port = 8080  # its own namespace: outside the two ephemeral ports
            srv = socket.create_server(("127.0.0.1", port))
            for _ in range(2):  # the client closes first: its port stays in TIME_WAIT
                c = socket.create_connection(("127.0.0.1", port))
                a, _ = srv.accept()
                c.close()
                a.recv(1)
                a.close()
            third = socket.socket()
            assert third.connect_ex(("127.0.0.1", port)) == errno.EADDRNOTAVAIL
            fd = third.fileno()
        finally:
            netns.popns()
        (ev,) = traced.until(
            lambda e: e["type"] == "connect" and e["fd"] == fd and e["dport"] == port
            and e["errno"] == errno.EADDRNOTAVAIL,
            "EADDRNOTAVAIL",
        )  # fmt: skip
        assert ev["pid"] == os.getpid()
        third.close()
        srv.close()
    finally:
        ns.destroy()
