"""The actors' end of the bus: ZeroMQ sockets around the schema in bus.schema.

Actors and probes use `EventSender` (PUSH to the events endpoint) and
`ControlClient` (DEALER to the control endpoint); the orchestrator's end is
bus/hub.py (PULL + ROUTER). Every frame a receiver gets goes through
`BusLedger`, so a bad frame is counted and recorded, never raised.

Sessions: `ControlClient.hello()` gets a WELCOME carrying a session token
for the actor's name, and the actor's EventSender stamps it on every events
frame (bus/hub.py says what the Hub checks).
"""

from __future__ import annotations

import os
import time
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


def new_context() -> zmq.Context[Any]:
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
        self._ctx = context or new_context()
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
        same record typed: bus.records.SocketRecord); `mono_ns` is its time,
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
        self._ctx = context or new_context()
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
