"""The one structlog configuration every actor uses.

Each record gets the actor's name, pid, mono_ns (time.monotonic_ns(), the
clock of bpf_ktime_get_ns()) and wall time, then goes to the bus as an
AppRecord (batched by EventSender) and, unless quiet, to stderr for a person.

Hot loops (the bomber's connect/close at ~18k connections/s, the server's
accept/close) use `SocketLog`, which builds the same AppRecord with no
processor chain: a structlog call costs several microseconds, a
`SocketLog` call well under one, and `SocketLog.conn` (a socket action
with its fd and 4-tuple, built positionally as a typed `SocketRecord`, no
dict) about a third of that (bench/actor_logging.py; docs/actors.md).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from bus.records import SocketRecord
from bus.transport import EventSender

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_PLAIN = (str, int, float, bool, type(None))


class AddActor:
    def __init__(self, actor: str) -> None:
        self.actor = actor

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["actor"] = self.actor
        return event_dict


class AddPid:
    def __init__(self) -> None:
        # Taken once: actors never fork after configuring logging.
        self.pid = os.getpid()

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["pid"] = self.pid
        return event_dict


def add_mono_ns(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["mono_ns"] = time.monotonic_ns()
    return event_dict


def add_wall(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["wall"] = time.time()
    return event_dict


def plain_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Values msgpack can carry: anything else (paths, exceptions) becomes text."""
    for key, value in event_dict.items():
        if not isinstance(value, _PLAIN):
            event_dict[key] = (
                value if isinstance(value, list | dict) and _all_plain(value) else str(value)
            )
    return event_dict


def _all_plain(value: list[Any] | dict[Any, Any]) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return all(isinstance(v, _PLAIN) for v in items)


class ShipToBus:
    """Hands a copy of the record to the EventSender (the renderer may mutate it)."""

    def __init__(self, sender: EventSender) -> None:
        self.sender = sender

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        self.sender.log(dict(event_dict), event_dict["mono_ns"])
        return event_dict


def drop(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Last processor when stderr is quiet: the record already went to the bus."""
    raise structlog.DropEvent


def configure(
    actor: str,
    sender: EventSender | None = None,
    *,
    stderr: bool = True,
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog for this process; call once at actor start."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        AddActor(actor),
        AddPid(),
        add_mono_ns,
        add_wall,
        plain_values,
    ]
    if sender is not None:
        processors.append(ShipToBus(sender))
    if stderr:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors.append(drop)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


class SocketLog:
    """The lean path for per-connection records in hot loops.

    Builds the same AppRecord fields as the structlog chain, without one.
    With no sender (an actor run alone) records are dropped unless `echo`,
    which prints a short line: thousands a second on a terminal help nobody.
    """

    def __init__(
        self,
        actor: str,
        sender: EventSender | None,
        *,
        echo: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.actor = actor
        self.pid = os.getpid()
        self.sender = sender
        self.echo = echo
        self.stream = stream or sys.stderr

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        if self.sender is None and not self.echo:
            return
        now = time.monotonic_ns()
        record = {
            "event": event,
            "actor": self.actor,
            "pid": self.pid,
            "mono_ns": now,
            "wall": time.time(),
            "level": level,
            **fields,
        }
        if self.sender is not None:
            self.sender.log(record, now)
        if self.echo:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            print(f"[{level}] {self.actor} {event} {extra}", file=self.stream)

    def conn(self, event: str, fd: int, laddr: str, lport: int, raddr: str, rport: int) -> None:
        """One socket action with its fd and local 4-tuple, at level info: the
        per-connection records, typed and positional (no dict, no keywords)."""
        if self.echo:
            print(f"[info] {self.actor} {event} fd={fd} {laddr}:{lport} -> {raddr}:{rport}",
                  file=self.stream)  # fmt: skip
        sender = self.sender
        if sender is not None:
            now = time.monotonic_ns()
            record = SocketRecord(event, self.actor, self.pid, now, time.time(), "info", fd,
                                  laddr, lport, raddr, rport)  # fmt: skip
            sender.log(record, now)
