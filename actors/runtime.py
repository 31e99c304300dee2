"""What every actor shares: arguments, bus connection, command loop, stop.

An actor run alone logs to stderr and starts at once. Under the
orchestrator (`--events --control --name`) it says hello, sets up, says
ready, waits for `start`, and stops on `stop`, SIGTERM/SIGINT, or when the
orchestrator's heartbeats stop (no orphans). Actors call `service()` from
their loops often (every few ms): it answers commands, heartbeats, ships
aged log batches and sends a STATS progress report about once a second.
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
import zmq

from bus import logging as buslog
from bus.endpoints import EndpointError, check_endpoint
from bus.schema import Envelope, Kind
from bus.transport import BusError, ControlClient, EventSender

STATS_INTERVAL_S = 1.0
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_ORCHESTRATOR_LOST = 3


class UsageError(ValueError):
    """Bad arguments or a refused request; the message says what to do instead."""


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every actor has."""
    p = argparse.ArgumentParser(prog=f"python -m actors.{prog}", description=description)
    bus = p.add_argument_group("bus (set by the orchestrator; omit to run alone)")
    bus.add_argument("--events", help="events endpoint to PUSH to, e.g. ipc:///run/x/events.sock")
    bus.add_argument("--control", help="control endpoint (DEALER), e.g. ipc:///run/x/control.sock")
    bus.add_argument("--name", default=prog, help=f"this actor's name in the run (default {prog})")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr")
    p.add_argument("--log-level", default="info", choices=list(buslog.LEVELS))
    return p


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'127.0.0.1:8080', '[::1]:8080' or '8080' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise UsageError(f"address {text!r}: use HOST:PORT with a port from 1 to 65535")
    return host, number


def sock_fields(sock: socket.socket) -> dict[str, Any]:
    """fd and the local 4-tuple of a connected socket (the correlator's join key)."""
    fields: dict[str, Any] = {"fd": sock.fileno()}
    try:
        laddr = sock.getsockname()
        raddr = sock.getpeername()
    except OSError:
        return fields
    fields.update(laddr=laddr[0], lport=laddr[1], raddr=raddr[0], rport=raddr[1])
    return fields


def error_fields(e: OSError) -> dict[str, Any]:
    code = e.errno or 0
    return {"errno": code, "error": errno.errorcode.get(code, str(code))}


def open_fds() -> int:
    """Open fds of this process (the directory's own fd not counted)."""
    return len(os.listdir("/proc/self/fd")) - 1


def raise_nofile(wanted: int | None = None) -> int:
    """Raise the soft open-file limit toward `wanted` (default: the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


Progress = Callable[[], dict[str, Any]]
SetHandler = Callable[[dict[str, Any]], dict[str, Any]]
StartHandler = Callable[[], dict[str, Any]]


class Runtime:
    """One actor's bus connection, log set-up, command loop and stop flag."""

    def __init__(self, role: str, args: argparse.Namespace) -> None:
        self.role = role
        self.name: str = args.name
        self.events: EventSender | None = None
        self.control: ControlClient | None = None
        self._ctx: zmq.Context[Any] | None = None
        if (args.events is None) != (args.control is None):
            raise UsageError("give both --events and --control, or neither to run alone")
        if args.events is not None:
            try:
                check_endpoint(args.events)
                check_endpoint(args.control)
            except EndpointError as e:
                raise UsageError(str(e)) from None
            # One ZeroMQ context for both sockets: each context costs threads.
            self._ctx = zmq.Context(io_threads=1)
            self.events = EventSender(args.events, self.name, context=self._ctx)
            self.control = ControlClient(args.control, self.name, context=self._ctx)
        buslog.configure(self.name, self.events, stderr=not args.quiet, level=args.log_level)
        self.log = structlog.get_logger()
        # Per-connection records: on the bus always, on stderr only when asked.
        self.sock_log = buslog.SocketLog(self.name, self.events)
        self.started = self.control is None
        self.stopping = False
        self.exit_code = EXIT_OK
        self.progress: Progress | None = None
        self.on_set: SetHandler | None = None
        # Work to do before `start` is acknowledged (a relay spawns its
        # program); its result goes into the ack, a UsageError refuses it.
        self.on_start: StartHandler | None = None
        # Where report() goes instead of the bus or stderr (a worker's pipe).
        self.reporter: Callable[[dict[str, Any]], None] | None = None
        self._next_stats = time.monotonic() + STATS_INTERVAL_S
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.control is not None:
            # Event frames carry the session hello got: the orchestrator refuses
            # frames under this name from anyone else.
            assert self.events is not None
            self.events.session = self.control.hello(role)

    @property
    def attached(self) -> bool:
        """True under the orchestrator."""
        return self.control is not None

    @property
    def running(self) -> bool:
        return self.started and not self.stopping

    def ready(self, **info: Any) -> None:
        """Set-up done: tell the orchestrator (and the person) what we offer."""
        self.log.info("ready", role=self.role, **info)
        if self.control is not None:
            self.control.ready(**info)

    def wait_start(self) -> bool:
        """Block until `start` (True) or a stop (False)."""
        while not self.started and not self.stopping:
            self.service(100)
        return self.running

    def service(self, timeout_ms: int = 0) -> None:
        """Commands, heartbeats, aged batches, progress; sleeps up to `timeout_ms`."""
        if self.control is None:
            if timeout_ms:
                time.sleep(timeout_ms / 1000)
        else:
            for cmd in self.control.poll(timeout_ms):
                self._handle(cmd)
            if self.control.lost() and not self.stopping:
                self.log.warning("orchestrator_lost", timeout_s=self.control.peer_timeout_s)
                self.stopping = True
                self.exit_code = EXIT_ORCHESTRATOR_LOST
        if self.events is not None:
            self.events.tick()
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + STATS_INTERVAL_S
            if self.progress is not None and self.started:
                self.report(self.progress())

    def report(self, body: dict[str, Any]) -> None:
        """A STATS message on the bus, or a progress line on stderr when alone."""
        if self.reporter is not None:
            self.reporter(body)
        elif self.events is not None:
            self.events.stats(body)
        else:
            self.log.info("progress", **body)

    def close(self) -> int:
        """Flush, eof, disconnect; the exit code for main()."""
        self.log.info("stopped", exit_code=self.exit_code)
        if self.events is not None:
            try:
                self.events.eof()
            except BusError as e:
                print(f"{self.name}: {e}", file=sys.stderr)
            # Lost orchestrator: nobody will read what is queued, do not wait.
            linger = 0 if self.exit_code == EXIT_ORCHESTRATOR_LOST else 2000
            self.events.close(linger_ms=linger)
        if self.control is not None:
            self.control.close(linger_ms=0 if self.exit_code else 1000)
        if self._ctx is not None:
            self._ctx.term()
        return self.exit_code

    def _handle(self, cmd: Envelope) -> None:
        assert self.control is not None
        name, args = cmd.body["name"], cmd.body["args"]
        if name == "start" and self.on_start is not None and not self.started:
            try:
                result = self.on_start()
            except UsageError as e:
                self.control.ack(cmd, False, error=str(e))
            else:
                self.started = True
                self.control.ack(cmd, True, result=result)
        elif name == "start":
            self.started = True
            self.control.ack(cmd, True)
        elif name == "stop":
            self.stopping = True
            self.control.ack(cmd, True)
        elif name == "set" and self.on_set is not None:
            try:
                result = self.on_set(args)
            except UsageError as e:
                self.control.ack(cmd, False, error=str(e))
            else:
                self.control.ack(cmd, True, result=result)
        else:
            self.control.ack(cmd, False, error=f"unknown command {name!r}: use start, stop or set")
        self.log.info("command", name=name, args=args)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self.stopping = True


def run(main_body: Callable[[], int], prog: str) -> int:
    """Turn UsageError and BusError into one line on stderr and an exit code."""
    try:
        return main_body()
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BusError as e:
        print(f"{prog}: bus error: {e}", file=sys.stderr)
        return EXIT_ORCHESTRATOR_LOST


__all__ = ["Kind", "Runtime", "UsageError", "parser", "run"]
