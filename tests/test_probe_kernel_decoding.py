"""Raw ring-buffer records against bcc's own decoding: every record the
probes delivered, decoded again field by field through table.event().
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Callable
from typing import Any

import pytest
from probe_kernel_harness import CLIENT, LISTENER, SERVER_CHILD, Collector, Event, Worker, expected

from bus.rawbatch import decode_batch, make_body
from bus.records import TCP_STATES
from probes.loader import Filters

pytestmark = [pytest.mark.root, pytest.mark.bpf]


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
