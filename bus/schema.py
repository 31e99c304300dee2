"""The message schema and codec: everything that crosses a process boundary.

A frame is one msgpack array: [version, kind, sender, seq, mono_ns, body].
`mono_ns` is time.monotonic_ns(), the same clock as bpf_ktime_get_ns(), so
kernel and application events join without offsets.

Every receiver calls `decode()`; it never raises on bad input from the wire,
it raises `FrameError` with a reason that `BusLedger` counts and records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

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
    KERNEL = "kernel"  # probes -> orchestrator (events): a batch of kernel events
    STATS = "stats"  # any -> orchestrator (events): counters and samples
    EOF = "eof"  # any -> orchestrator (events): I am done; my last event seq


# Required body fields per kind and their types. Extra fields are allowed
# (forward compatibility); missing or mistyped required ones are malformed.
BODY_FIELDS: dict[Kind, dict[str, type | tuple[type, ...]]] = {
    Kind.HELLO: {"role": str, "pid": int},
    Kind.READY: {"pid": int},
    Kind.HEARTBEAT: {},
    Kind.COMMAND: {"name": str, "args": dict},
    Kind.ACK: {"command_seq": int, "ok": bool},
    Kind.LOG: {"records": list},
    Kind.KERNEL: {"events": list},
    Kind.STATS: {"source": str},
    Kind.EOF: {"last_seq": int},
}


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


def encode(env: Envelope) -> bytes:
    return msgpack.packb(
        [VERSION, env.kind.value, env.sender, env.seq, env.mono_ns, env.body],
        use_bin_type=True,
    )


def decode(frame: bytes) -> Envelope:
    """Decode and validate one frame; raise FrameError, never anything else."""
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameError("oversized", f"{len(frame)} bytes > {MAX_FRAME_BYTES}")
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except msgpack.ExtraData as e:
        raise FrameError("malformed", f"trailing bytes after the frame: {e}") from None
    except (ValueError, msgpack.UnpackException) as e:
        reason = "truncated" if "incomplete" in str(e).lower() else "malformed"
        raise FrameError(reason, f"not msgpack: {e}") from None
    except Exception as e:  # msgpack raises several types for hostile input
        raise FrameError("malformed", f"not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(raw, list) or len(raw) != 6:
        raise FrameError("malformed", "not a 6-element envelope array")
    version, kind, sender, seq, mono_ns, body = raw
    if version != VERSION:
        raise FrameError("bad_version", f"version {version!r}, this build speaks {VERSION}")
    try:
        k = Kind(kind)
    except (ValueError, TypeError):
        raise FrameError("unknown_kind", f"kind {kind!r}") from None
    if not isinstance(sender, str) or not sender:
        raise FrameError("malformed", "sender is not a non-empty string")
    if type(seq) is not int or seq < 0:
        raise FrameError("malformed", "seq is not a non-negative integer")
    if type(mono_ns) is not int or mono_ns < 0:
        raise FrameError("malformed", "mono_ns is not a non-negative integer")
    if not isinstance(body, dict):
        raise FrameError("malformed", "body is not a map")
    for name, typ in BODY_FIELDS[k].items():
        value = body.get(name)
        if value is None or not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise FrameError("malformed", f"{k} body field {name!r} missing or not {typ}")
    return Envelope(k, sender, seq, mono_ns, body)


class Sequencer:
    """Numbers one sender's outgoing messages on one channel, from 1."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.last_seq = 0

    def make(self, kind: Kind, body: dict[str, Any]) -> Envelope:
        self.last_seq += 1
        return Envelope(kind, self.sender, self.last_seq, time.monotonic_ns(), body)

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
    frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    eof_seq: dict[str, int] = field(default_factory=dict)

    def accept(self, frame: bytes) -> Envelope | None:
        """Decode a frame; return it, or None after recording why not."""
        self.frames += 1
        try:
            env = decode(frame)
        except FrameError as e:
            self.rejected[e.reason] = self.rejected.get(e.reason, 0) + 1
            if len(self.samples) < self.keep:
                self.samples.append(
                    {"reason": e.reason, "detail": e.detail, "head": frame[:64].hex()}
                )
            return None
        self._track(env)
        return env

    def _track(self, env: Envelope) -> None:
        prev = self.last_seq.get(env.sender, 0)
        if env.seq != prev + 1:
            self.gaps.append(Gap(env.sender, prev + 1, env.seq))
        self.last_seq[env.sender] = max(prev, env.seq)
        if env.kind is Kind.EOF:
            self.eof_seq[env.sender] = env.body["last_seq"]

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
            "rejected": dict(self.rejected),
            "rejected_samples": list(self.samples),
            "gaps": [vars(g) for g in self.gaps],
            "senders": {
                s: {"last_seq": n, "eof_seq": self.eof_seq.get(s), "complete": self.complete(s)}
                for s, n in self.last_seq.items()
            },
        }
