"""Test harness: a real Hub and real actor processes over real ZeroMQ."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from bus.endpoints import BUS_DIR_PREFIX, Endpoints, ipc_endpoints
from bus.hub import Hub
from bus.schema import Envelope, Kind, Sequencer, decode, encode


@dataclass
class Lab:
    hub: Hub
    endpoints: Endpoints
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen: list[Envelope] = field(default_factory=list)

    def spawn(
        self, module: str, name: str, *args: str, prefix: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `python -m actors.<module>` attached to the hub."""
        argv = [*(prefix or []), sys.executable, "-m", f"actors.{module}", "--quiet"]
        argv += [*self.endpoints.as_args(), "--name", name, *args]
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        self.procs[name] = proc
        return proc

    def start(
        self, module: str, name: str, *args: str, prefix: list[str] | None = None
    ) -> dict[str, Any]:
        """Spawn an actor, wait for its READY and command start: the READY body."""
        self.spawn(module, name, *args, prefix=prefix)
        ready = self.wait_for(is_ready(name), 20, f"{name} ready")
        ack = self.hub.command(name, "start")
        assert ack.body["ok"], ack.body
        return dict(ready.body)

    def pump(self, timeout_ms: int = 100) -> None:
        self.seen.extend(env for _, env in self.hub.poll(timeout_ms))

    def wait_for(self, pred: Callable[[Envelope], bool], timeout_s: float, what: str) -> Envelope:
        """The first envelope (already seen or arriving) that matches, or fail."""
        deadline = time.monotonic() + timeout_s
        checked = 0
        while True:
            for env in self.seen[checked:]:
                if pred(env):
                    return env
            checked = len(self.seen)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            self.pump()

    def records(self, sender: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for env in self.seen
            if env.kind is Kind.LOG and env.sender == sender
            for r in env.body["records"]
            if event is None or r["event"] == event
        ]

    def stats(self, sender: str) -> list[dict[str, Any]]:
        return [e.body for e in self.seen if e.kind is Kind.STATS and e.sender == sender]

    def stop(self, name: str, timeout_s: float = 15) -> int:
        """Command stop, wait for eof and the exit code."""
        ack = self.hub.command(name, "stop", timeout_s=timeout_s)
        assert ack.body["ok"], ack.body
        self.wait_for(lambda e: e.kind is Kind.EOF and e.sender == name, timeout_s, f"{name} eof")
        return self.procs[name].wait(timeout=timeout_s)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            if p.stderr is not None:
                p.stderr.close()
        self.hub.close()


def is_ready(name: str) -> Callable[[Envelope], bool]:
    return lambda e: e.kind is Kind.READY and e.sender == name


def attach(hub: Hub, endpoints: Endpoints, name: str) -> tuple[zmq.Socket[bytes], str]:
    """Say hello on a bare DEALER, pumping the hub here; its socket and the session."""
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(endpoints.control)
    dealer.send(encode(Sequencer(name).make(Kind.HELLO, {"role": "test", "pid": os.getpid()})))
    deadline = time.monotonic() + 10
    while not dealer.poll(0):
        assert time.monotonic() < deadline, "no welcome"
        hub.poll(20)
    welcome = decode(dealer.recv())
    assert Kind.WELCOME is welcome.kind and welcome.body["ok"]
    return dealer, welcome.body["session"]


def bus_of(orchestrator_pid: int, timeout_s: float = 30) -> Endpoints:
    """A running orchestrator's bus, once both sockets are bound (its
    directory is named after its pid)."""
    deadline = time.monotonic() + timeout_s
    pattern = f"{BUS_DIR_PREFIX}{orchestrator_pid}-*"
    while time.monotonic() < deadline:
        for d in Path(tempfile.gettempdir()).glob(pattern):
            if (d / "events.sock").exists() and (d / "control.sock").exists():
                return ipc_endpoints(d)
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} with both sockets after {timeout_s}s")
