"""The actors' per-connection records: typed, batched, and none of them lost.

Real ZeroMQ to a real Hub (its decode validates every LOG record against
bus.records.AppRecord); real actor processes and real loopback sockets.
"""

from __future__ import annotations

import os
import time

import pytest
from actor_harness import Lab, attach

from bus.endpoints import Endpoints
from bus.hub import Hub
from bus.logging import SocketLog
from bus.schema import Kind
from bus.transport import EventSender

COUNT = 3000  # several LOG batches per actor (500 records each)


def test_typed_and_dict_records_arrive_complete_in_order(endpoints: Endpoints, hub: Hub) -> None:
    """Every record SocketLog ships, typed (conn) or not (a call with any
    fields), arrives once, in order, as the AppRecord map the bus validates."""
    dealer, session = attach(hub, endpoints, "server")
    sender = EventSender(endpoints.events, "server", session=session)
    log = SocketLog("server", sender)
    sent = []
    for i in range(1, COUNT + 1):
        if i % 3:
            log.conn("accept", i, "127.0.0.1", 8080, "127.0.0.2", 40000 + i % 20000)
            sent.append({"event": "accept", "fd": i, "rport": 40000 + i % 20000})
        else:
            log("peer_close", "warning", fd=i, how="reset", errno=104, error="ECONNRESET")
            sent.append({"event": "peer_close", "fd": i, "how": "reset", "level": "warning"})
    sender.eof()
    got = []
    deadline = time.monotonic() + 20
    while not hub.events_ledger.complete("server") and time.monotonic() < deadline:
        got += [r for _, e in hub.poll(100) if e.kind is Kind.LOG for r in e.body["records"]]
    sender.close()
    dealer.close(linger=0)
    assert {} == hub.events_ledger.rejected
    assert hub.events_ledger.complete("server")
    assert len(sent) == len(got)
    for want, rec in zip(sent, got, strict=True):
        assert want.items() <= rec.items()
        assert ("server", os.getpid()) == (rec["actor"], rec["pid"])
    typed = [r for r in got if r["event"] == "accept"]
    # A typed record carries exactly its fields: nothing left out, nothing added.
    keys = {"event", "actor", "pid", "mono_ns", "wall", "level"}
    assert {frozenset(keys | {"fd", "laddr", "lport", "raddr", "rport"})} == {
        frozenset(r) for r in typed
    }
    assert "info" == typed[0]["level"]
    times = [r["mono_ns"] for r in got]
    assert times == sorted(times)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_bomber_and_server_records_match_connection_for_connection(lab: Lab, host: str) -> None:
    """The bomber's COUNT connections: each one's connect and close records
    from the bomber, and accept, peer_close and close from the server, all
    received, naming the same 4-tuples from both ends (the server reads its
    local end from the listener, or per connection when it listens on any
    address)."""
    port = int(lab.start("server", "server", "--port", "0", "--host", host)["port"])
    lab.start("bomber", "bomber", "--target", f"127.0.0.1:{port}", "--count", str(COUNT))
    done = lab.wait_for(
        lambda e: e.kind is Kind.STATS and e.sender == "bomber" and bool(e.body.get("done")),
        60,
        "bomber done",
    )
    assert (COUNT, COUNT) == (done.body["attempts"], done.body["connected"])
    # The server closes each connection once it reads the bomber's FIN.
    lab.wait_for(
        lambda e: e.kind is Kind.STATS and e.sender == "server" and e.body["closed"] == COUNT,
        60,
        "server closed every connection",
    )
    assert 0 == lab.stop("bomber")
    assert 0 == lab.stop("server")
    assert lab.hub.events_ledger.complete("bomber")
    assert lab.hub.events_ledger.complete("server")
    assert {} == lab.hub.events_ledger.rejected

    def tuples(sender: str, event: str, mine: bool = True) -> list[tuple[str, int, str, int]]:
        recs = [r for r in lab.records(sender, event) if not r.get("listener")]
        if mine:
            return [(r["laddr"], r["lport"], r["raddr"], r["rport"]) for r in recs]
        return [(r["raddr"], r["rport"], r["laddr"], r["lport"]) for r in recs]

    connects = tuples("bomber", "connect")
    assert COUNT == len(connects) == len(set(connects))
    assert connects == tuples("bomber", "close")
    # The server names each connection from its own end: swap to compare.
    for event in ("accept", "peer_close", "close"):
        assert sorted(connects) == sorted(tuples("server", event, mine=False)), event
