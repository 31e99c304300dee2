"""The bus between real processes: a Hub here, an actor-like peer in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from actor_harness import attach

from bus.endpoints import Endpoints
from bus.hub import Hub
from bus.schema import Envelope, Gap, Kind, Sequencer, encode
from bus.transport import BusError, Channel, EventSender

# The peer: hello, ready, then obeys "emit" (n LOG records) and "stop" (eof,
# exit 0); exits 3 when the orchestrator goes quiet.
PEER = """
import sys
from bus.logging import SocketLog
from bus.transport import ControlClient, EventSender
events, control, name = sys.argv[1:4]
ev = EventSender(events, name)
log = SocketLog(name, ev)
ctl = ControlClient(control, name, heartbeat_s=0.1, peer_timeout_s=1.0)
ev.session = ctl.hello("peer")
ctl.ready()
while True:
    if ctl.lost():
        ev.close(linger_ms=0); ctl.close(linger_ms=0); sys.exit(3)
    for cmd in ctl.poll(50):
        if cmd.body["name"] == "emit":
            for i in range(cmd.body["args"]["n"]):
                log("send", i=i)
            ev.flush()
            ctl.ack(cmd, True, result={"sent": cmd.body["args"]["n"]})
        elif cmd.body["name"] == "stop":
            ctl.ack(cmd, True)
            ev.eof(); ev.close(); ctl.close(); sys.exit(0)
        else:
            ctl.ack(cmd, False, error="unknown command")
    ev.tick()
"""


@pytest.fixture
def spawn(endpoints: Endpoints) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def start_peer(procs: list[subprocess.Popen[bytes]], ep: Endpoints, name: str) -> None:
    procs.append(subprocess.Popen([sys.executable, "-c", PEER, ep.events, ep.control, name]))


def poll_until_eof(hub: Hub, sender: str, timeout_s: float) -> list[Envelope]:
    got: list[Envelope] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for _, env in hub.poll(100):
            got.append(env)
            if env.kind is Kind.EOF and env.sender == sender:
                return got
    raise AssertionError(f"no eof from {sender} within {timeout_s}s")


def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {proc.pid} still running after {timeout_s}s") from None


def test_handshake_command_batches_and_eof(
    hub: Hub, endpoints: Endpoints, spawn: list[subprocess.Popen[bytes]]
) -> None:
    """A peer says hello/ready, answers commands, batches its LOG records and
    ends with an eof that lets the hub check it received every message."""
    start_peer(spawn, endpoints, "peer-a")
    hub.wait_ready(["peer-a"], timeout_s=20)
    assert "peer" == hub.actors["peer-a"].role
    assert spawn[0].pid == hub.actors["peer-a"].pid

    seq = hub.send_command("peer-a", "emit", {"n": 1200})
    ack = hub.wait_ack("peer-a", seq, timeout_s=10)
    assert {"command_seq": seq, "ok": True, "result": {"sent": 1200}} == ack.body
    bad = hub.command("peer-a", "dance", timeout_s=10)
    assert (False, "unknown command") == (bad.body["ok"], bad.body["error"])
    hub.command("peer-a", "stop", timeout_s=10)

    got = poll_until_eof(hub, "peer-a", timeout_s=10)
    logs = [e for e in got if e.kind is Kind.LOG]
    records = [r for e in logs for r in e.body["records"]]
    assert list(range(1200)) == [r["i"] for r in records]
    assert 3 <= len(logs) < 20  # batched: 500 + 500 + 200, never one per record
    assert hub.events_ledger.complete("peer-a")
    assert 0 == wait_exit(spawn[0], 10)


def test_peer_stops_when_orchestrator_disappears(
    hub: Hub, endpoints: Endpoints, spawn: list[subprocess.Popen[bytes]]
) -> None:
    """Without heartbeats from the orchestrator the peer exits by itself (no orphans)."""
    start_peer(spawn, endpoints, "peer-b")
    hub.wait_ready(["peer-b"], timeout_s=20)
    hub.close()
    assert 3 == wait_exit(spawn[0], 15)


def test_sigkilled_peer_is_reported_silent(
    hub: Hub, endpoints: Endpoints, spawn: list[subprocess.Popen[bytes]]
) -> None:
    """A peer killed with SIGKILL stops heartbeating and shows up in hub.silent();
    a live one does not."""
    start_peer(spawn, endpoints, "victim")
    start_peer(spawn, endpoints, "alive")
    hub.wait_ready(["victim", "alive"], timeout_s=20)
    os.kill(spawn[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    silent: list[str] = []
    while time.monotonic() < deadline and not silent:
        hub.poll(100)
        silent = hub.silent(timeout_s=1.0)
    assert ["victim"] == silent


def test_sequence_gap_is_recorded(hub: Hub, endpoints: Endpoints) -> None:
    """A sender that skips seq numbers leaves a Gap in the ledger and an incomplete stream."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints.events)
    dealer, session = attach(hub, endpoints, "gappy")
    try:
        seq = Sequencer("gappy", session)
        envs = [seq.make(Kind.STATS, {"source": "gappy", "n": i}) for i in range(5)]
        for env in envs[:2] + envs[4:]:
            push.send(encode(env))
        push.send(encode(seq.eof()))
        poll_until_eof(hub, "gappy", timeout_s=10)
    finally:
        push.close(linger=0)
        dealer.close(linger=0)
    assert [Gap("gappy", 3, 5)] == hub.events_ledger.gaps
    assert not hub.events_ledger.complete("gappy")


def test_command_to_unknown_actor_is_a_clear_error(hub: Hub) -> None:
    """Commanding an actor that never said hello raises BusError naming it."""
    with pytest.raises(BusError, match="no actor 'ghost'"):
        hub.command("ghost", "start", timeout_s=1)


def test_recorder_sees_every_accepted_frame(endpoints: Endpoints) -> None:
    """The record hook gets the raw bytes of accepted frames only."""
    seen: list[tuple[Channel, bytes]] = []
    h = Hub(endpoints.events, endpoints.control, record=lambda c, f: seen.append((c, f)))
    dealer, session = attach(h, endpoints, "rec")
    seen.clear()  # the hello, on control
    sender = EventSender(endpoints.events, "rec", session=session)
    try:
        env = sender.stats({"n": 1})
        sender.close()
        sender_push: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
        sender_push.connect(endpoints.events)
        sender_push.send(b"\xc1garbage")
        sender_push.close(linger=1000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and h.events_ledger.frames < 2:
            h.poll(100)
    finally:
        dealer.close(linger=0)
        h.close()
    assert [(Channel.EVENTS, encode(env))] == seen
    assert {"malformed": 1} == h.events_ledger.rejected
