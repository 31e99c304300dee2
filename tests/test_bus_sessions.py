"""Sequence accounting follows the connection that said hello: a frame under a
connected actor's name from anyone else is refused, never counted against the
actor, and a second HELLO for a connected name cannot take over its route."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from bus.endpoints import Endpoints
from bus.hub import Hub

# A well-behaved actor: hello (its session comes back), ready, obeys "emit"
# (n STATS frames on events) and "stop" (eof, exit 0); exits 3 when the
# orchestrator's heartbeats stop, as a real actor whose route was stolen does.
PEER = """
import sys
from bus.transport import ControlClient, EventSender
events, control, name = sys.argv[1:4]
ev = EventSender(events, name)
ctl = ControlClient(control, name, heartbeat_s=0.1, peer_timeout_s=1.5)
ev.session = ctl.hello("peer")
ctl.ready()
while not ctl.lost():
    for cmd in ctl.poll(50):
        if cmd.body["name"] == "emit":
            for i in range(cmd.body["args"]["n"]):
                ev.stats({"i": i})
            ctl.ack(cmd, True, result={"pid": __import__("os").getpid()})
        elif cmd.body["name"] == "stop":
            ctl.ack(cmd, True)
            ev.eof(); ev.close(); ctl.close(); sys.exit(0)
ev.close(linger_ms=0); ctl.close(linger_ms=0); sys.exit(3)
"""


def frame(kind: str, sender: Any, seq: int, body: dict[str, Any]) -> bytes:
    # By hand, not with bus.schema.encode: what an impostor would put on the wire.
    return msgpack.packb([1, kind, sender, seq, time.monotonic_ns(), body], use_bin_type=True)


@pytest.fixture
def peer(hub: Hub, endpoints: Endpoints) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PEER, endpoints.events, endpoints.control, "peer-a"]
    )
    try:
        hub.wait_ready(["peer-a"], timeout_s=20)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def pump_until(hub: Hub, done: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        hub.poll(50)


def stop_and_drain(hub: Hub, proc: subprocess.Popen[bytes]) -> int:
    hub.command("peer-a", "stop", timeout_s=10)
    pump_until(hub, lambda: "peer-a" in hub.events_ledger.eof_seq, 10, "the peer's eof")
    return proc.wait(timeout=10)


def test_a_frame_under_a_connected_name_does_not_poison_its_sequence(
    hub: Hub, endpoints: Endpoints, peer: subprocess.Popen[bytes]
) -> None:
    """Issue 10.2: one frame with the server's name and a huge seq made every
    later frame of the real server count as a gap."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints.events)
    try:
        hub.command("peer-a", "emit", {"n": 3}, timeout_s=10)
        body = {"source": "peer-a"}
        push.send(frame("stats", "peer-a", 10**9, body))  # the name alone
        push.send(frame("stats", ["peer-a", "guessed"], 10**9 + 1, body))  # a made-up session
        pump_until(
            hub,
            lambda: hub.events_ledger.rejected.get("impostor") == 2,
            10,
            "both impostor frames counted",
        )
        hub.command("peer-a", "emit", {"n": 3}, timeout_s=10)
        assert 0 == stop_and_drain(hub, peer)
    finally:
        push.close(linger=0)
    ledger = hub.events_ledger
    assert [] == ledger.gaps
    assert ledger.complete("peer-a")
    assert 7 == ledger.last_seq["peer-a"]  # 6 STATS and the eof, nothing else
    assert 2 == len([s for s in ledger.samples if s["reason"] == "impostor"])


def test_a_second_hello_for_a_connected_name_is_refused(
    hub: Hub, endpoints: Endpoints, peer: subprocess.Popen[bytes]
) -> None:
    """Issue 10.2: a second HELLO with a connected actor's name took over its
    route, and the real actor, cut off from the orchestrator, died."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    impostor = ctx.socket(zmq.DEALER)
    # The identity the actors used to have: the name itself.
    impostor.setsockopt(zmq.IDENTITY, b"peer-a")
    impostor.connect(endpoints.control)
    try:
        impostor.send(frame("hello", "peer-a", 1, {"role": "peer", "pid": 1}))
        pump_until(
            hub,
            lambda: hub.control_ledger.rejected.get("duplicate_hello") == 1,
            10,
            "the second hello refused",
        )
        answer = msgpack.unpackb(impostor.recv() if impostor.poll(5000) else b"\xc0")
        # The real actor still gets commands and answers them, for longer
        # than it takes to notice lost heartbeats.
        end = time.monotonic() + 3
        while time.monotonic() < end:
            ack = hub.command("peer-a", "emit", {"n": 1}, timeout_s=5)
            assert peer.pid == ack.body["result"]["pid"]
            hub.poll(200)
        assert 0 == stop_and_drain(hub, peer)
    finally:
        impostor.close(linger=0)
    assert answer is not None and "welcome" == answer[1] and answer[5]["ok"] is False
    assert "peer-a" in answer[5]["error"]
    assert [] == hub.events_ledger.gaps


def test_frames_from_a_name_that_never_said_hello_are_refused(
    hub: Hub, endpoints: Endpoints
) -> None:
    """Only a connection that said hello puts frames on the events bus."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints.events)
    try:
        push.send(frame("stats", "stranger", 1, {"source": "stranger"}))
        pump_until(hub, lambda: hub.events_ledger.frames == 1, 10, "the frame")
    finally:
        push.close(linger=0)
    assert {"no_hello": 1} == hub.events_ledger.rejected
    assert {} == hub.events_ledger.last_seq


def test_an_actor_started_under_a_taken_name_says_so_and_exits(
    hub: Hub, endpoints: Endpoints, peer: subprocess.Popen[bytes]
) -> None:
    """A real actor whose hello is refused ends with one line naming the fix,
    and the actor that holds the name carries on."""
    second = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "actors.server",
            *endpoints.as_args(),
            "--name",
            "peer-a",
            "--port",
            "0",
            "--quiet",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    pump_until(hub, lambda: second.poll() is not None, 20, "the second actor to exit")
    _, err = second.communicate()
    assert 3 == second.returncode  # actors' exit code for a bus error
    lines = err.strip().splitlines()
    assert 1 == len(lines), err
    assert "refused hello" in lines[0] and "--name" in lines[0], err
    assert 1 == hub.control_ledger.rejected.get("duplicate_hello")
    ack = hub.command("peer-a", "emit", {"n": 1}, timeout_s=10)
    assert peer.pid == ack.body["result"]["pid"]
    assert 0 == stop_and_drain(hub, peer)
