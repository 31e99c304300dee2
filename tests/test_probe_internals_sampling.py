"""tcp:tcp_probe sampled in the kernel, on real loopback sockets: a bulk
transfer's hits reduced to events, a zero window reported both ways.

Each test drives connections to its own listener and looks only at events
of that port (other helpers' runs share this kernel); the probes are
attached once for the module (tests/probe_internals_harness.py).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from lab_helpers import SLOW
from probe_internals_harness import Event, Traced, pair

from probes.program import SAMPLE_MS

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def test_bulk_transfer_is_sampled_in_the_kernel(listener: socket.socket, traced: Traced) -> None:
    """Hits are counted, events are fewer; a socket's events without a
    change are at least SAMPLE_MS apart; the fields are the socket's."""
    cli, conn = pair(listener)
    cport = cli.getsockname()[1]
    total = 32 << 20
    sender_thread = threading.Thread(target=cli.sendall, args=(b"x" * total,))
    sender_thread.start()
    try:
        got = 0
        while got < total:
            data = conn.recv(1 << 20)
            assert data, "the connection ended early"
            got += len(data)
        sender_thread.join()
    finally:
        cli.close()
        conn.close()
    traced.wait(
        lambda ev: any(e["type"] == "tcp_probe" and e["dport"] == cport for e in ev),
        "tcp_probe events of the receiver",
    )
    traced.probes.drain_all()
    sender = traced.of("tcp_probe", sport=cport)
    receiver = traced.of("tcp_probe", dport=cport)
    assert sender and receiver
    assert sender[0]["why"] == "first"
    assert {e["saddr"] for e in sender} == {"127.0.0.1"}
    assert {e["dport"] for e in sender} == {traced.port}
    hits = traced.probes.stats()["programs"]["tcp_probe"]["hits"]
    events = traced.probes.stats()["programs"]["tcp_probe"]["events"]
    # Every hit of our two sockets is reported in some event's `hits`.
    ours = sum(e["hits"] for e in sender + receiver)
    assert ours <= hits
    assert events < ours, "sampling let every hit through"
    for a, b in zip(sender, sender[1:], strict=False):
        if b["why"] == "period":
            assert b["ts"] - a["ts"] >= SAMPLE_MS * 1_000_000
        if b["why"] == "cwnd":
            assert (a["snd_cwnd"], a["ssthresh"]) != (b["snd_cwnd"], b["ssthresh"])
    # The sender's in-flight bytes and srtt are its own: data was in flight.
    assert max(e["in_flight"] for e in sender) > 0
    assert all(e["srtt_us"] > 0 for e in sender)


def test_zero_window_is_reported_both_ways(listener: socket.socket, traced: Traced) -> None:
    """A reader that stops: the sender's snd_wnd reaches 0 (an event when it
    does), and when the reader drains, an event when it reopens. (A cwnd
    change at the same hit is reported as the reason: it is checked first.)"""
    cli, conn = pair(listener, rcvbuf=16384)
    cport = cli.getsockname()[1]
    cli.setblocking(False)
    try:
        sent = 0
        deadline = time.monotonic() + 10 * SLOW
        while time.monotonic() < deadline:
            try:
                sent += cli.send(b"y" * 65536)
            except BlockingIOError:
                if any(e["snd_wnd"] == 0 for e in traced.of("tcp_probe", sport=cport)):
                    break
                traced.probes.poll(0.02)
        closed = traced.wait(
            lambda ev: any(
                e["type"] == "tcp_probe" and e["sport"] == cport and e["snd_wnd"] == 0 for e in ev
            ),
            "zero window on the sender",
        )
        assert closed

        def reopened(ev: list[Event]) -> bool:
            snd = [e["snd_wnd"] for e in ev if e["type"] == "tcp_probe" and e["sport"] == cport]
            return 0 in snd and any(w > 0 for w in snd[snd.index(0) :])

        conn.setblocking(False)
        while not reopened(traced.events):
            try:
                if not conn.recv(1 << 20):
                    break
            except BlockingIOError:
                traced.probes.poll(0.01)
        traced.wait(reopened, "the window reopening")
    finally:
        cli.close()
        conn.close()
    sender = traced.of("tcp_probe", sport=cport)
    # Both crossings are events of their own (whatever else changed there):
    # the event before the first zero had an open window, and so on.
    first_zero = next(i for i, e in enumerate(sender) if e["snd_wnd"] == 0)
    assert first_zero > 0 and sender[first_zero - 1]["snd_wnd"] > 0
    assert sender[first_zero]["why"] in ("zero_window", "cwnd")
    reopen = next(e for e in sender[first_zero:] if e["snd_wnd"] > 0)
    assert reopen["why"] in ("zero_window", "cwnd")
