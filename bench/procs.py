"""The processes a bench section runs: the C and Python servers, a gated
start (the pid known before it runs), reaping with the CPU it used, stopping,
the bomber's own figures, and the idle spinners that keep both arms of a
comparison under equal idle conditions."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import PY, BenchError

IDLE_SPINNER = """
import os
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
while True:
    pass
"""


@contextmanager
def idle_spinners() -> Iterator[None]:
    """One SCHED_IDLE busy loop per CPU while the block runs.

    On this VM a connect loop on loopback runs 1.25-1.6x faster when the
    other core is busy than when it idles (waking an idle vCPU is slow),
    and an attached tracer keeps a core busy: without this, "with probes /
    without" compares a busy machine with an idle one. A SCHED_IDLE task
    runs only when nothing else wants the CPU, so both arms see cores that
    never idle and lose (almost) nothing to the spinners.
    """
    procs = [subprocess.Popen([PY, "-c", IDLE_SPINNER]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout_s: float = 15.0) -> None:
    """Poll until something accepts on 127.0.0.1:port (a server's start-up)."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g}s")


@contextmanager
def c_server(exe: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The C accept()/close() server every bomber measurement connects to."""
    proc = subprocess.Popen([str(exe), "server", str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"listening\n":
            raise BenchError(f"connect_loop server could not listen on {port}")
        yield proc
    finally:
        stop(proc)


@contextmanager
def py_server(port: int, netns: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """actors.server (the lab's echo server), optionally inside a namespace."""
    argv = [PY, "-m", "actors.server", "--port", str(port), "--quiet"]
    proc = subprocess.Popen([*(netns or []), *argv])
    try:
        if netns is None:
            wait_listening(port)
        yield proc
    finally:
        stop(proc)


def reap(
    proc: subprocess.Popen[Any], idle: Callable[[], object] | None = None, limit_s: float = 120
) -> float:
    """Wait for `proc` to exit, calling `idle()` meanwhile (or sleeping
    10 ms); return the CPU seconds (user + system) it used, from wait4.

    CPU per connection is the steadier figure on a shared machine: the
    neighbours slow a loop down, they hardly change what it costs."""
    deadline = time.monotonic() + limit_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            stop(proc)
            raise BenchError(f"{proc.args!r} did not finish in {limit_s:g}s")
        if idle is None:
            time.sleep(0.01)
        else:
            idle()


def stop(proc: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gated(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start argv held at a gate: its pid is known (for the probes' pid
    filter) before it runs. `release()` opens the gate; exec keeps the pid."""
    return subprocess.Popen(
        ["sh", "-c", 'read _gate && exec "$@"', "sh", *argv], stdin=subprocess.PIPE, **kwargs
    )


def release(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()


def bomber_argv(port: int, count: int) -> list[str]:
    return [PY, "-m", "actors.bomber", "--target", f"127.0.0.1:{port}", "--count", str(count)]


def bomber_rate(stderr: str) -> float:
    """The bomber's own connections/s (from start to its last connection)."""
    for line in stderr.splitlines():
        if " done " in line and "per_s=" in line:
            return float(line.split("per_s=")[1].split()[0])
    raise BenchError(f"the bomber did not report: {stderr[-400:]}")


def bomber_cpu_us(stderr: str, count: int) -> float:
    """The bomber's own CPU µs per connection (its `done` line's cpu_s)."""
    for line in stderr.splitlines():
        if " done " in line and "cpu_s=" in line:
            return float(line.split("cpu_s=")[1].split()[0]) * 1e6 / count
    raise BenchError(f"the bomber did not report its CPU: {stderr[-400:]}")


def c_loop_rate(stdout: str) -> float:
    return float(stdout.split()[0])
