"""The message schema and codec: everything that crosses a process boundary.

A frame is one msgpack array: [version, kind, sender, seq, mono_ns, body].
`sender` is the sender's name, or [name, session] on the events channel: the
session is the token the orchestrator gave that name's control connection in
its WELCOME, so an events frame proves which connection sent it.
`mono_ns` is time.monotonic_ns(), the same clock as bpf_ktime_get_ns(), so
kernel and application events join without offsets.

Every receiver calls `decode()`; it never raises on bad input from the wire,
it raises `FrameError` with a reason that `BusLedger` counts and records.
Bodies are checked against their kind's typed definition (bus.records,
msgspec): a frame whose body does not fit is rejected as "bad_body", so
consumers only ever see bodies of the documented shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from bus.records import (
    KERNEL_EVENTS,
    AckBody,
    CommandBody,
    EofBody,
    HeartbeatBody,
    HelloBody,
    KernelBody,
    KernelRawBody,
    LogBody,
    ReadyBody,
    SocketRecord,
    StatsBody,
    WelcomeBody,
)

VERSION = 1
# A kernel batch of 1000 events is ~100 KB; anything near this is an attack
# or a bug, never a legitimate frame.
MAX_FRAME_BYTES = 16 * 1024 * 1024


class Kind(StrEnum):
    HELLO = "hello"  # actor -> orchestrator (control): I exist, here is my role and pid
    READY = "ready"  # actor -> orchestrator (control): set up, waiting for commands
    HEARTBEAT = "heartbeat"  # both ways (control): I am alive
    COMMAND = "command"  # orchestrator -> actor (control): start, stop, set
    ACK = "ack"  # actor -> orchestrator (control): a command's result
    LOG = "log"  # actor -> orchestrator (events): a batch of structlog records
    KERNEL = "kernel"  # probes -> orchestrator (events): a batch of kernel events (dicts)
    KERNEL_RAW = "kernel_raw"  # probes -> orchestrator (events): raw records (bus/rawbatch.py)
    STATS = "stats"  # any -> orchestrator (events): counters and samples
    EOF = "eof"  # any -> orchestrator (events): I am done; my last event seq
    WELCOME = "welcome"  # orchestrator -> actor (control): hello's answer, the session or why not


# The typed definition of each kind's body (bus.records). A new kind (for
# example a batch of raw ring records) adds its Kind above and its body here.
BODIES: dict[Kind, type[msgspec.Struct]] = {
    Kind.HELLO: HelloBody,
    Kind.READY: ReadyBody,
    Kind.HEARTBEAT: HeartbeatBody,
    Kind.COMMAND: CommandBody,
    Kind.ACK: AckBody,
    Kind.LOG: LogBody,
    Kind.KERNEL: KernelBody,
    Kind.KERNEL_RAW: KernelRawBody,
    Kind.STATS: StatsBody,
    Kind.EOF: EofBody,
    Kind.WELCOME: WelcomeBody,
}
# The envelope with its body left as bytes: the body is decoded once its kind is known.
_ENVELOPE = msgspec.msgpack.Decoder(tuple[Any, Any, Any, Any, Any, msgspec.Raw])
# What a decoded body is checked against: its kind's definition; a LOG
# batch's records as SocketRecord, the same fields as a Struct, which
# msgspec checks in about 2/3 of the time it takes for the TypedDict.
_LOG_TYPED = msgspec.msgpack.Decoder(
    msgspec.defstruct("LogTyped", [("records", list[SocketRecord])])  # type: ignore[valid-type]
)
_CHECK: dict[Kind, Any] = {**BODIES, Kind.LOG: _LOG_TYPED.type}
_KERNEL_BATCH = msgspec.msgpack.Decoder(KernelBody)
_KERNEL_RAW_BATCH = msgspec.msgpack.Decoder(KernelRawBody)
_KERNEL_EVENTS = {
    probe: msgspec.msgpack.Decoder(list[record])  # type: ignore[valid-type]
    for probe, record in KERNEL_EVENTS.items()
}
_PLAIN = msgspec.msgpack.Decoder(dict[str, Any])


class FrameError(ValueError):
    """A frame that cannot be accepted. `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    sender: str
    seq: int
    mono_ns: int
    body: dict[str, Any]
    session: str | None = None  # see the module's docstring


# msgspec writes the same msgpack as msgpack.packb for plain values, and also
# the typed records of bus.logging (as maps), at about half the cost.
_ENCODER = msgspec.msgpack.Encoder()


def encode(env: Envelope) -> bytes:
    sender = env.sender if env.session is None else [env.sender, env.session]
    return _ENCODER.encode([VERSION, env.kind.value, sender, env.seq, env.mono_ns, env.body])


def decode(frame: bytes, *, typed_log: bool = False) -> Envelope:
    """Decode and validate one frame; raise FrameError, never anything else.

    `typed_log`: a LOG batch's records come out as SocketRecord Structs
    (the fields AppRecord names; any other key is left out), checked and
    decoded in one pass, about half the cost of dicts: for a receiver that
    counts or forwards the records and never reads them whole (the
    orchestrator's live loop; its recording keeps the frames as they came)."""
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameError("oversized", f"{len(frame)} bytes > {MAX_FRAME_BYTES}")
    try:
        version, kind, sender, seq, mono_ns, raw = _ENVELOPE.decode(frame)
    except msgspec.ValidationError as e:
        raise FrameError("malformed", f"not a 6-element envelope array: {e}") from None
    except msgspec.DecodeError as e:
        reason = "truncated" if "truncated" in str(e) else "malformed"
        raise FrameError(reason, f"not msgpack: {e}") from None
    except Exception as e:  # hostile input can exhaust the recursion limit, say
        raise FrameError("malformed", f"not msgpack: {type(e).__name__}: {e}") from None
    if version != VERSION or type(version) is not int:
        raise FrameError("bad_version", f"version {version!r}, this build speaks {VERSION}")
    try:
        k = Kind(kind)
    except (ValueError, TypeError):
        raise FrameError("unknown_kind", f"kind {kind!r}") from None
    session = None
    if type(sender) is list and len(sender) == 2:
        sender, session = sender
        if type(session) is not str or not session:
            raise FrameError("malformed", "session is not a non-empty string")
    if type(sender) is not str or not sender:
        raise FrameError("malformed", "sender is not a non-empty string or [name, session]")
    if type(seq) is not int or seq < 0:
        raise FrameError("malformed", "seq is not a non-negative integer")
    if type(mono_ns) is not int or mono_ns < 0:
        raise FrameError("malformed", "mono_ns is not a non-negative integer")
    if typed_log and k is Kind.LOG:
        try:
            body: dict[str, Any] = {"records": _LOG_TYPED.decode(raw).records}  # type: ignore[attr-defined]
        except msgspec.ValidationError as e:
            raise FrameError("bad_body", f"{k} body: {e}") from None
        except Exception as e:  # bad UTF-8 deep in a body, or a recursion bomb
            raise FrameError("malformed", f"{k} body: {type(e).__name__}: {e}") from None
    else:
        body = _body(k, raw)
    return Envelope(k, sender, seq, mono_ns, body, session)


def _body(kind: Kind, raw: msgspec.Raw) -> dict[str, Any]:
    """The body as a plain dict, once it fits its kind's definition."""
    try:
        if kind is Kind.KERNEL:
            # One pass: the records are TypedDicts, decoded straight to dicts.
            batch = _KERNEL_BATCH.decode(raw)
            events = _KERNEL_EVENTS.get(batch.probe)
            if events is None:
                known = ", ".join(KERNEL_EVENTS)
                raise FrameError("bad_body", f"kernel body: probe {batch.probe!r} (known: {known})")
            return {"probe": batch.probe, "events": events.decode(batch.events)}
        if kind is Kind.KERNEL_RAW:
            # One pass, like KERNEL: the records' bytes are copied out once.
            rb = _KERNEL_RAW_BATCH.decode(raw)
            body = {"probe": rb.probe, "layout": msgspec.structs.asdict(rb.layout),
                    "records": rb.records}  # fmt: skip
            _check_raw(body)
            return body
        # Decoded once, as plain values, so that keys the definition does not
        # name stay for the consumers (msgspec's typed decoding drops them:
        # msgspec issue 490); those values are then checked against it.
        plain: dict[str, Any] = _PLAIN.decode(raw)
        msgspec.convert(plain, _CHECK[kind])
        return plain
    except msgspec.ValidationError as e:
        raise FrameError("bad_body", f"{kind} body: {e}") from None
    except FrameError:
        raise
    except Exception as e:  # bad UTF-8 deep in a body, or a recursion bomb
        raise FrameError("malformed", f"{kind} body: {type(e).__name__}: {e}") from None


def _check_raw(body: dict[str, Any]) -> None:
    """A raw kernel batch: the layout against its id, its fields, whole records."""
    # Imported here: bus.rawbatch needs numpy, and every actor imports this
    # module for its commands; numpy at import would give each actor an
    # OpenBLAS thread, ~0.3 s more start-up and more memory. Only receivers
    # of raw batches (orchestrator, correlator) get here.
    from bus.rawbatch import RawBatchError, check_body

    try:
        check_body(body)
    except RawBatchError as e:
        raise FrameError("bad_body", f"{Kind.KERNEL_RAW} body: {e}") from None


class Sequencer:
    """Numbers one sender's outgoing messages on one channel, from 1."""

    def __init__(self, sender: str, session: str | None = None) -> None:
        self.sender = sender
        self.session = session
        self.last_seq = 0

    def make(self, kind: Kind, body: dict[str, Any]) -> Envelope:
        self.last_seq += 1
        return Envelope(kind, self.sender, self.last_seq, time.monotonic_ns(), body, self.session)

    def eof(self) -> Envelope:
        """The sender's last message: its own seq is the last one there is."""
        return self.make(Kind.EOF, {"last_seq": self.last_seq + 1})


@dataclass
class Gap:
    sender: str
    expected: int
    got: int


@dataclass
class BusLedger:
    """What a receiver saw: bad frames by reason, sequence gaps, eofs.

    Nothing is silent: every rejected frame is counted under its reason and
    its first bytes kept (up to `keep` samples), every gap is recorded.
    """

    keep: int = 20
    typed_log: bool = False  # decode(typed_log=): LOG records as Structs
    frames: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    eof_seq: dict[str, int] = field(default_factory=dict)

    def accept(self, frame: bytes) -> Envelope | None:
        """Decode a frame and track its sequence; None after recording why not."""
        env = self.take(frame)
        if env is not None:
            self.track(env)
        return env

    def take(self, frame: bytes) -> Envelope | None:
        """Count and decode a frame, without tracking it yet (the receiver may
        still refuse it: see `reject`); None after recording why not."""
        self.frames += 1
        try:
            return decode(frame, typed_log=self.typed_log)
        except FrameError as e:
            self._count(e.reason, e.detail, frame)
            return None

    def reject(self, reason: str, detail: str, frame: bytes) -> None:
        """Refuse a frame that `take` decoded: counted like a malformed one."""
        self._count(reason, detail, frame)

    def track(self, env: Envelope) -> None:
        """An accepted envelope: check its sender's sequence, note its eof."""
        self.accepted += 1
        prev = self.last_seq.get(env.sender, 0)
        if env.seq != prev + 1:
            self.gaps.append(Gap(env.sender, prev + 1, env.seq))
        self.last_seq[env.sender] = max(prev, env.seq)
        if env.kind is Kind.EOF:
            self.eof_seq[env.sender] = env.body["last_seq"]

    def _count(self, reason: str, detail: str, frame: bytes) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if len(self.samples) < self.keep:
            self.samples.append({"reason": reason, "detail": detail, "head": frame[:64].hex()})

    def complete(self, sender: str) -> bool:
        """True when `sender` said eof and every message up to it arrived."""
        return (
            sender in self.eof_seq
            and self.last_seq.get(sender) == self.eof_seq[sender]
            and not any(g.sender == sender for g in self.gaps)
        )

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "rejected_samples": list(self.samples),
            "gaps": [vars(g) for g in self.gaps],
            "senders": {
                s: {"last_seq": n, "eof_seq": self.eof_seq.get(s), "complete": self.complete(s)}
                for s, n in self.last_seq.items()
            },
        }
