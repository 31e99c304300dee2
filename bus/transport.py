"""The wire side of the bus: ZeroMQ sockets around the schema in bus.schema.

Actors and probes use `EventSender` (PUSH to the events endpoint) and
`ControlClient` (DEALER to the control endpoint). The orchestrator uses `Hub`
(PULL + ROUTER). Every frame a receiver gets goes through `BusLedger`, so a
bad frame is counted and recorded, never raised.

Sessions: a HELLO on control is answered with a WELCOME carrying a random
session token for that name; the actor's EventSender stamps it on every
events frame. The Hub accepts an events frame only when its session is its
sender's, and control frames of a name only from the connection that said
hello for it, so nobody else can move an actor's sequence accounting or
take over its route.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import zmq

from bus.schema import BusLedger, Envelope, Kind, Sequencer, encode

# A LOG batch goes out when it holds this many records or its oldest record
# is this old, whichever comes first: big enough to amortise msgpack and
# ZeroMQ per-message costs, small enough that the timeline stays live.
BATCH_MAX = 500
BATCH_AGE_NS = 20_000_000

HEARTBEAT_S = 0.5
# Missing six heartbeats in a row means the peer is gone, not just busy.
PEER_TIMEOUT_S = 3.0
# The orchestrator answers hello from its loop within ~100 ms; this is for a
# loaded machine, and short enough that an actor nobody answers does not linger.
WELCOME_TIMEOUT_S = 10.0

# Messages queued per socket before send blocks. With batches of 500 this is
# ~500k records in flight: plenty to ride out an orchestrator pause.
SEND_HWM = 1000


class BusError(RuntimeError):
    """The bus cannot carry on (peer gone, stalled, or no answer in time)."""


class Channel(StrEnum):
    EVENTS = "events"
    CONTROL = "control"


def _new_context() -> zmq.Context[Any]:
    # One I/O thread is enough for a few sockets and keeps actors' thread
    # counts low (the multiplexer budget is small).
    return zmq.Context(io_threads=1)


class EventSender:
    """PUSH to the events endpoint: numbered envelopes, batched LOG records.

    Sends block when the orchestrator is slow (PUSH at its high-water mark
    waits, it never drops). A send that stays blocked for `stall_s` raises
    BusError: the orchestrator is not draining and waiting longer would
    leave an orphan.
    """

    def __init__(
        self,
        endpoint: str,
        sender: str,
        *,
        batch_max: int = BATCH_MAX,
        batch_age_ns: int = BATCH_AGE_NS,
        stall_s: float = 30.0,
        session: str | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.sequencer = Sequencer(sender, session)
        self.batch_max = batch_max
        self.batch_age_ns = batch_age_ns
        self._own_context = context is None
        self._ctx = context or _new_context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._sock.setsockopt(zmq.SNDTIMEO, int(stall_s * 1000))
        self._sock.connect(endpoint)
        self._batch: list[Any] = []
        self._batch_start_ns = 0
        self._closed = False

    @property
    def sender(self) -> str:
        return self.sequencer.sender

    @property
    def session(self) -> str | None:
        """The token from ControlClient.hello(), stamped on every frame; set it
        before the first send: the Hub refuses frames without it."""
        return self.sequencer.session

    @session.setter
    def session(self, token: str | None) -> None:
        self.sequencer.session = token

    def send(self, kind: Kind, body: dict[str, Any]) -> Envelope:
        """Send one envelope now (after any pending LOG batch, to keep order)."""
        self.flush()
        return self._send(self.sequencer.make(kind, body))

    def stats(self, body: dict[str, Any]) -> Envelope:
        """A STATS envelope; `source` defaults to the sender's name."""
        return self.send(Kind.STATS, {"source": self.sender, **body})

    def log(self, record: Any, mono_ns: int = 0) -> None:
        """Queue one record for the next LOG batch (an AppRecord dict, or the
        same record typed: bus.logging.SocketRecord); `mono_ns` is its time,
        which ships the batch once it is due."""
        batch = self._batch
        if not batch:
            self._batch_start_ns = time.monotonic_ns()
        batch.append(record)
        age_ns = mono_ns - self._batch_start_ns
        if len(batch) >= self.batch_max or age_ns >= self.batch_age_ns:
            self.flush()

    def tick(self) -> None:
        """Ship a batch that has aged out; call from any idle loop."""
        if self._batch and time.monotonic_ns() - self._batch_start_ns >= self.batch_age_ns:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            records, self._batch = self._batch, []
            self._send(self.sequencer.make(Kind.LOG, {"records": records}))

    def eof(self) -> Envelope:
        """Flush, then say which seq was the last: the receiver can check it has all."""
        self.flush()
        return self._send(self.sequencer.eof())

    def close(self, linger_ms: int = 2000) -> None:
        """Flush and close; pending frames get `linger_ms` to reach the peer."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self._sock.close(linger=linger_ms)
            if self._own_context:
                self._ctx.term()

    def _send(self, env: Envelope) -> Envelope:
        try:
            # copy=False would start pyzmq's garbage-collector thread (and a second
            # context): three more threads per actor for no gain at these sizes.
            self._sock.send(encode(env))
        except zmq.Again:
            raise BusError(
                f"{self.sender}: the orchestrator stopped reading events; giving up"
            ) from None
        return env


class ControlClient:
    """DEALER to the control endpoint (its identity is the ROUTER's choice).

    Protocol: hello(role) -> session -> (set up) -> ready() -> commands, each answered
    with ack(). Heartbeats go out every HEARTBEAT_S from `poll()`; anything
    heard from the orchestrator counts as its heartbeat, and `lost()` turns
    true when it has been silent for `peer_timeout_s`.
    """

    def __init__(
        self,
        endpoint: str,
        sender: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        peer_timeout_s: float = PEER_TIMEOUT_S,
        welcome_timeout_s: float = WELCOME_TIMEOUT_S,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.sequencer = Sequencer(sender)
        self.ledger = BusLedger()
        self.heartbeat_s = heartbeat_s
        self.peer_timeout_s = peer_timeout_s
        self.welcome_timeout_s = welcome_timeout_s
        self._commands: list[Envelope] = []
        self._own_context = context is None
        self._ctx = context or _new_context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.SNDTIMEO, int(peer_timeout_s * 1000))
        self._sock.connect(endpoint)
        now = time.monotonic()
        self._last_heard = now
        self._last_sent = now
        self._closed = False

    @property
    def sender(self) -> str:
        return self.sequencer.sender

    def fileno(self) -> int:
        """The ZeroMQ notification fd, for selectors (edge-triggered: drain on wake)."""
        return int(self._sock.getsockopt(zmq.FD))

    def hello(self, role: str, **extra: Any) -> str:
        """Say hello and wait for the WELCOME; return the session for EventSender.

        BusError when the orchestrator refuses (the name is taken by a
        connected actor) or does not answer within `welcome_timeout_s`.
        """
        self._send(Kind.HELLO, {"role": role, "pid": os.getpid(), **extra})
        deadline = time.monotonic() + self.welcome_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusError(
                    f"{self.sender}: no answer to hello from the orchestrator in "
                    f"{self.welcome_timeout_s:g}s; is it running?"
                )
            welcome = None
            for env in self._receive(int(left * 1000) + 1):
                if env.kind is Kind.WELCOME:
                    welcome = env
                elif env.kind is Kind.COMMAND:
                    self._commands.append(env)  # for the next poll()
            if welcome is None:
                continue
            if not welcome.body["ok"]:
                raise BusError(
                    f"{self.sender}: the orchestrator refused hello: "
                    f"{welcome.body.get('error', '')}"
                )
            return str(welcome.body["session"])

    def ready(self, **extra: Any) -> None:
        self._send(Kind.READY, {"pid": os.getpid(), **extra})

    def ack(
        self,
        command: Envelope,
        ok: bool,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        body: dict[str, Any] = {"command_seq": command.seq, "ok": ok}
        if error is not None:
            body["error"] = error
        if result is not None:
            body["result"] = result
        self._send(Kind.ACK, body)

    def poll(self, timeout_ms: int = 0) -> list[Envelope]:
        """Commands received within `timeout_ms`; heartbeats handled here."""
        commands, self._commands = self._commands, []
        wait = 0 if commands else timeout_ms
        commands += [e for e in self._receive(wait) if e.kind is Kind.COMMAND]
        if time.monotonic() - self._last_sent >= self.heartbeat_s:
            self._send(Kind.HEARTBEAT, {})
        return commands

    def _receive(self, timeout_ms: int) -> list[Envelope]:
        """What the orchestrator sent within `timeout_ms`: anything counts as its heartbeat."""
        got: list[Envelope] = []
        if self._sock.poll(timeout_ms, zmq.POLLIN):
            while True:
                try:
                    frame = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                env = self.ledger.accept(frame)
                if env is not None:
                    self._last_heard = time.monotonic()
                    got.append(env)
        return got

    def lost(self) -> bool:
        """True when the orchestrator has been silent for longer than the timeout."""
        return time.monotonic() - self._last_heard > self.peer_timeout_s

    def close(self, linger_ms: int = 1000) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close(linger=linger_ms)
        if self._own_context:
            self._ctx.term()

    def _send(self, kind: Kind, body: dict[str, Any]) -> None:
        try:
            self._sock.send(encode(self.sequencer.make(kind, body)))
        except zmq.Again:
            raise BusError(
                f"{self.sender}: cannot reach the orchestrator's control socket"
            ) from None
        self._last_sent = time.monotonic()


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
    is called with every accepted raw frame, heartbeats included.
    """

    def __init__(
        self,
        events: str,
        control: str,
        *,
        record: Recorder | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        sender: str = "orchestrator",
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.events_ledger = BusLedger()
        self.control_ledger = BusLedger()
        self.actors: dict[str, ActorState] = {}
        # Kept after forget(): a reaped actor's last frames may still be queued.
        self.sessions: dict[str, Session] = {}
        self.acks: dict[tuple[str, int], Envelope] = {}
        self.heartbeat_s = heartbeat_s
        self._record = record
        self._sender = sender
        self._own_context = context is None
        self._ctx = context or _new_context()
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
        # Bounded so a flood on one socket cannot starve the other.
        for _ in range(10_000):
            try:
                frames = self._pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
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
        for _ in range(10_000):
            try:
                parts = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ledger = self.control_ledger
            if len(parts) != 2:
                # A DEALER sends exactly one frame; more is not our protocol.
                ledger.frames += 1
                ledger.reject("multipart", f"{len(parts) - 1} frames after the identity",
                              b"".join(parts[1:]))
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
            refusal = Sequencer(self._sender).make(Kind.WELCOME, {
                "ok": False,
                "error": f"the name {name!r} is taken by a connected actor (pid {taken.pid}); "
                         "use another --name",
            })
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
            taken = self.actors[name] = ActorState(
                name, identity, outgoing=Sequencer(self._sender)
            )
        taken.last_heard = time.monotonic()
        taken.role = env.body["role"]
        taken.pid = env.body["pid"]
        taken.ready = False
        self._send_to(identity, taken.outgoing.make(
            Kind.WELCOME, {"ok": True, "session": session.token}
        ))
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
