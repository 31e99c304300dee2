"""What the tests of the TCP internals probes on loopback share
(tests/test_probe_internals_*.py): the probes attached and filtered to one
listener's port, the events they delivered, a connected pair of sockets.

The `attached`, `listener` and `traced` fixtures (conftest.py) build on
these: one ProbeSet compiled per test module (compiling takes seconds), each
test narrowing it to its own listener's port (other helpers' runs share
this kernel). A test helper, not part of the product.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from lab_helpers import SLOW

from bus.rawbatch import make_body
from bus.rawconvert import batch_events
from probes import tpformat
from probes.loader import Filters, ProbeSet
from probes.plan import make_plan, tracefs

Event = dict[str, Any]
# sock:inet_sk_error_report is from 5.13: on 5.10 (`make test-kernels`) the
# errno handed to the application has no kernel event, and none is expected.
ERROR_REPORT = tpformat.fields(tracefs(), "sock:inet_sk_error_report") is not None


class Traced:
    """The internals probes attached (compiled once per module), filtered to
    one listener's port per test."""

    def __init__(self) -> None:
        self.port = 0
        self.events: list[Event] = []
        self.probes = ProbeSet(make_plan(), ["tcp_probe", "tcp_events"], Filters(ports={1}))
        self.probes.start(self._add)

    def follow(self, port: int) -> None:
        self.probes.drain_all()
        self.probes.set_filters(Filters(ports={port}))
        self.port = port
        self.events.clear()

    def _add(self, probe: str, records: bytes) -> None:
        self.events.extend(batch_events(make_body(probe, self.probes.layout(probe), records)))

    def wait(self, done: Callable[[list[Event]], bool], what: str) -> list[Event]:
        deadline = time.monotonic() + 10 * SLOW
        while not done(self.events):
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {10 * SLOW:g}s; got {self.events[-5:]}")
            self.probes.poll(0.05)
        return self.events

    def of(self, kind: str, **match: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
        ]


def pair(listener: socket.socket, rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A client connected to `listener`, and the accepted end."""
    cli = socket.socket()
    if rcvbuf is not None:
        # A small buffer and a small MSS: the receiver announces its window
        # again as soon as its reader frees a segment's worth (on loopback's
        # 64 KB MSS it would wait for the sender's backed-off probes).
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        for s in (listener, cli):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)
    cli.connect(listener.getsockname())
    conn, _ = listener.accept()
    return cli, conn
