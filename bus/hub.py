"""The orchestrator's end of the bus: `Hub`, PULL for events and ROUTER for control.

Every frame goes through a `BusLedger` (bus.schema), so a bad frame is
counted and recorded, never raised.

Sessions: a HELLO on control is answered with a WELCOME carrying a random
session token for that name; the actor's EventSender (bus/transport.py)
stamps it on every events frame. The Hub accepts an events frame only when
its session is its sender's, and control frames of a name only from the
connection that said hello for it, so nobody else can move an actor's
sequence accounting or take over its route.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from bus.schema import BusLedger, Envelope, Kind, Sequencer, encode
from bus.transport import HEARTBEAT_S, PEER_TIMEOUT_S, BusError, Channel, new_context

# The longest one pump reads a socket before the heartbeats go out: a backlog
# of frames that are slow to take (LOG batches to decode, a slow disk under
# the recording) kept the actors without a heartbeat past PEER_TIMEOUT_S, and
# they gave up. What is left waits for the next pump.
DRAIN_BUDGET_S = HEARTBEAT_S / 5


@dataclass
class ActorState:
    """What the hub knows of one actor on the control channel."""

    name: str
    identity: bytes  # the ROUTER identity of the connection that said hello
    role: str = ""
    pid: int = 0
    ready: bool = False
    last_heard: float = field(default_factory=time.monotonic)
    last_beat_sent: float = 0.0
    # One numbering per actor, so each actor sees its own gap-free stream.
    outgoing: Sequencer = field(default_factory=lambda: Sequencer("orchestrator"))


@dataclass(frozen=True)
class Session:
    """The connection that said hello for a name, and the token its event frames carry."""

    identity: bytes
    token: str


Recorder = Callable[[Channel, bytes], None]


class Hub:
    """The orchestrator's end: PULL for events, ROUTER for control.

    `poll()` returns accepted envelopes (heartbeats excepted) with their
    channel; `wait_ready()` and `command()` keep everything they receive for
    the next `poll()`, so nothing is lost while waiting. `record`, if given,
    is called with every accepted raw frame, heartbeats included. With
    `typed_log`, LOG records come out typed (bus.schema.decode says how).
    """

    def __init__(
        self,
        events: str,
        control: str,
        *,
        record: Recorder | None = None,
        typed_log: bool = False,
        heartbeat_s: float = HEARTBEAT_S,
        sender: str = "orchestrator",
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.events_ledger = BusLedger(typed_log=typed_log)
        self.control_ledger = BusLedger()
        self.actors: dict[str, ActorState] = {}
        # Kept after forget(): a reaped actor's last frames may still be queued.
        self.sessions: dict[str, Session] = {}
        self.acks: dict[tuple[str, int], Envelope] = {}
        self.heartbeat_s = heartbeat_s
        self._record = record
        self._sender = sender
        self._own_context = context is None
        self._ctx = context or new_context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._router = self._ctx.socket(zmq.ROUTER)
        # Sends to an identity that is not connected fail loudly, not silently.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # No ROUTER_HANDOVER: identities are the ROUTER's own, and a name is
        # bound to the connection that said hello for it (see _on_hello).
        self._pull.bind(events)
        self._router.bind(control)
        self._poller = zmq.Poller()
        self._poller.register(self._pull, zmq.POLLIN)
        self._poller.register(self._router, zmq.POLLIN)
        self._pending: list[tuple[Channel, Envelope]] = []
        self._closed = False

    def poll(self, timeout_ms: int = 0) -> list[tuple[Channel, Envelope]]:
        """Everything accepted since the last call, waiting up to `timeout_ms` for some."""
        self._pump(0 if self._pending else timeout_ms)
        out, self._pending = self._pending, []
        return out

    def wait_ready(self, names: list[str], timeout_s: float) -> None:
        """Return once every named actor said ready; BusError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [n for n in names if not (n in self.actors and self.actors[n].ready)]
            if not missing:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusError(
                    f"actors not ready after {timeout_s:g}s: {', '.join(missing)}; "
                    "check their stderr"
                )
            self._pump(min(100, int(left * 1000) + 1))

    def send_command(self, actor: str, name: str, args: dict[str, Any] | None = None) -> int:
        """Send a command without waiting; return its seq (the ack's command_seq)."""
        state = self.actors.get(actor)
        if state is None:
            raise BusError(f"no actor {actor!r} on the bus (known: {', '.join(self.actors)})")
        env = state.outgoing.make(Kind.COMMAND, {"name": name, "args": args or {}})
        self._route(actor, env)
        return env.seq

    def wait_ack(self, actor: str, command_seq: int, timeout_s: float) -> Envelope:
        deadline = time.monotonic() + timeout_s
        while (actor, command_seq) not in self.acks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusError(f"{actor} did not answer command #{command_seq} in {timeout_s:g}s")
            self._pump(min(100, int(left * 1000) + 1))
        return self.acks.pop((actor, command_seq))

    def command(
        self, actor: str, name: str, args: dict[str, Any] | None = None, timeout_s: float = 5.0
    ) -> Envelope:
        """Send a command and return the actor's ACK envelope (check body["ok"])."""
        return self.wait_ack(actor, self.send_command(actor, name, args), timeout_s)

    def broadcast(
        self, name: str, args: dict[str, Any] | None = None, timeout_s: float = 5.0
    ) -> dict[str, Envelope]:
        """Send a command to every ready actor at once; their ACKs by actor name."""
        seqs = {a: self.send_command(a, name, args) for a, s in self.actors.items() if s.ready}
        deadline = time.monotonic() + timeout_s
        return {
            a: self.wait_ack(a, q, max(0.0, deadline - time.monotonic())) for a, q in seqs.items()
        }

    def silent(self, timeout_s: float = PEER_TIMEOUT_S) -> list[str]:
        """Actors not heard from for `timeout_s` that never said eof: dead or hung."""
        now = time.monotonic()
        return sorted(
            name
            for name, s in self.actors.items()
            if now - s.last_heard > timeout_s and name not in self.events_ledger.eof_seq
        )

    def forget(self, actor: str) -> None:
        """Stop heartbeating an actor the orchestrator has reaped."""
        self.actors.pop(actor, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pull.close(linger=0)
        self._router.close(linger=0)
        if self._own_context:
            self._ctx.term()

    def _pump(self, timeout_ms: int) -> None:
        ready = dict(self._poller.poll(timeout_ms))
        if self._pull in ready:
            self._drain_events()
        if self._router in ready:
            self._drain_control()
        self._beat()

    def _drain_events(self) -> None:
        for frames in _waiting(self._pull, time.monotonic() + DRAIN_BUDGET_S):
            frame = frames[-1] if len(frames) == 1 else b"".join(frames)
            ledger = self.events_ledger
            env = ledger.take(frame)
            if env is None:
                continue
            session = self.sessions.get(env.sender)
            if session is None:
                ledger.reject("no_hello", f"{env.sender!r} never said hello on control", frame)
                continue
            if env.session != session.token:
                ledger.reject(
                    "impostor", f"{env.sender!r} frame without the session its hello got", frame
                )
                continue
            ledger.track(env)
            if self._record is not None:
                self._record(Channel.EVENTS, frame)
            state = self.actors.get(env.sender)
            if state is not None:
                state.last_heard = time.monotonic()
            self._pending.append((Channel.EVENTS, env))

    def _drain_control(self) -> None:
        for parts in _waiting(self._router, time.monotonic() + DRAIN_BUDGET_S):
            ledger = self.control_ledger
            if len(parts) != 2:
                # A DEALER sends exactly one frame; more is not our protocol.
                ledger.frames += 1
                ledger.reject(
                    "multipart", f"{len(parts) - 1} frames after the identity", b"".join(parts[1:])
                )
                continue
            identity, frame = parts
            env = ledger.take(frame)
            if env is None:
                continue
            if env.kind is Kind.HELLO:
                self._on_hello(identity, env, frame)
                continue
            session = self.sessions.get(env.sender)
            if session is None:
                ledger.reject("no_hello", f"{env.kind} from {env.sender!r} before its hello", frame)
                continue
            if session.identity != identity:
                ledger.reject(
                    "impostor", f"{env.kind} for {env.sender!r} from another connection", frame
                )
                continue
            ledger.track(env)
            if self._record is not None:
                self._record(Channel.CONTROL, frame)
            self._on_control(env)

    def _on_hello(self, identity: bytes, env: Envelope, frame: bytes) -> None:
        """Bind the name to this connection and answer with its session, unless
        the name belongs to another connection that is still connected."""
        name = env.sender
        session = self.sessions.get(name)
        taken = self.actors.get(name)
        if taken is not None and taken.identity != identity:
            self.control_ledger.reject(
                "duplicate_hello",
                f"hello for {name!r} (pid {env.body['pid']}) from another connection while "
                f"pid {taken.pid} holds the name",
                frame,
            )
            refusal = Sequencer(self._sender).make(
                Kind.WELCOME,
                {
                    "ok": False,
                    "error": f"the name {name!r} is taken by a connected actor (pid {taken.pid}); "
                    "use another --name",
                },
            )
            self._send_to(identity, refusal)
            return
        if session is None or session.identity != identity:
            # The first hello for the name, or a new process after the old one
            # was reaped (forget): a fresh session.
            session = self.sessions[name] = Session(identity, secrets.token_hex(16))
        self.control_ledger.track(env)
        if self._record is not None:
            self._record(Channel.CONTROL, frame)
        if taken is None:
            taken = self.actors[name] = ActorState(name, identity, outgoing=Sequencer(self._sender))
        taken.last_heard = time.monotonic()
        taken.role = env.body["role"]
        taken.pid = env.body["pid"]
        taken.ready = False
        self._send_to(
            identity, taken.outgoing.make(Kind.WELCOME, {"ok": True, "session": session.token})
        )
        self._pending.append((Channel.CONTROL, env))

    def _on_control(self, env: Envelope) -> None:
        state = self.actors.get(env.sender)
        if state is None:
            return  # reaped (forget): its last words are counted, nothing to do
        state.last_heard = time.monotonic()
        if env.kind is Kind.READY:
            state.ready = True
        elif env.kind is Kind.ACK:
            self.acks[(env.sender, env.body["command_seq"])] = env
        if env.kind is not Kind.HEARTBEAT:
            self._pending.append((Channel.CONTROL, env))

    def _beat(self) -> None:
        now = time.monotonic()
        for name, state in list(self.actors.items()):
            if now - state.last_beat_sent >= self.heartbeat_s:
                state.last_beat_sent = now
                try:
                    self._route(name, state.outgoing.make(Kind.HEARTBEAT, {}), block=False)
                except BusError:
                    pass  # a gone actor shows up in silent(); nothing to do here

    def _route(self, actor: str, env: Envelope, block: bool = True) -> None:
        try:
            self._router.send_multipart(
                [self.actors[actor].identity, encode(env)], 0 if block else zmq.NOBLOCK
            )
        except zmq.ZMQError as e:
            raise BusError(f"cannot reach actor {actor!r}: {e.strerror}") from None

    def _send_to(self, identity: bytes, env: Envelope) -> None:
        # Never blocks: a peer that does not read its answers only loses them.
        try:
            self._router.send_multipart([identity, encode(env)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass


def _waiting(sock: zmq.Socket[Any], until: float) -> Iterator[list[bytes]]:
    """The messages a socket holds now, until time.monotonic() passes `until`;
    bounded, so that a flood on one socket cannot starve the other nor the
    heartbeats."""
    for _ in range(10_000):
        if time.monotonic() > until:
            return
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
