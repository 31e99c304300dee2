"""What the bench sections share: the result row, builds, peers, helpers.

Every figure in the table is a ratio against a peer measured in the same
invocation (alternating runs, medians), because this 2-core machine is shared
and noisy: an absolute figure alone would say more about the neighbours
than about tcplab.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"  # git-ignored: compiled peers
OUT = HERE / "out"  # git-ignored: results, recordings, run directories
PY = sys.executable


class BenchError(RuntimeError):
    """A bench section cannot run; the message says what is missing."""


@dataclass
class Row:
    """One line of the table: a figure, its peer, their ratio and the goal."""

    key: str  # stable id (the smoke test checks these)
    section: str
    measure: str
    value: float | None
    unit: str
    peer: float | None = None
    peer_label: str = ""
    ratio: float | None = None
    goal: str = "—"  # e.g. ">= 0.95" applied to `goal_on`
    goal_on: str = "ratio"  # "ratio" or "value"
    met: bool | None = None  # None: no goal, or could not be measured
    note: str = ""
    runs: dict[str, list[float]] = field(default_factory=dict)
    incomplete: bool = False  # measured only part of the way: the goal cannot be met

    def judge(self) -> Row:
        """Fill `ratio` (when both figures exist) and `met` from `goal`."""
        if self.ratio is None and self.value is not None and self.peer:
            self.ratio = self.value / self.peer
        target = self.ratio if self.goal_on == "ratio" else self.value
        if self.incomplete and self.goal != "—":
            self.met = False
            return self
        if self.goal == "—" or target is None:
            self.met = None
            return self
        op, _, num = self.goal.partition(" ")
        limit = float(num)
        self.met = {">=": target >= limit, "<=": target <= limit, "==": target == limit}[op]
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed_row(key: str, section: str, measure: str, unit: str, goal: str, why: str) -> Row:
    """A row whose measurement broke: shown, never silently left out."""
    return Row(key, section, measure, None, unit, goal=goal, note=f"not measured: {why}")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def log(msg: str) -> None:
    """Progress on stderr, so a person sees where a 10-minute run is."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- builds


def build_c() -> Path:
    """bench/connect_loop.c, compiled now: the minimal C peer and load generator."""
    if shutil.which("gcc") is None:
        raise BenchError("gcc is missing: run scripts/provision.sh (build-essential)")
    BUILD.mkdir(exist_ok=True)
    exe = BUILD / "connect_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "connect_loop.c")], check=True)
    return exe


def ensure_go() -> str:
    """The go tool; Debian's golang-go is installed with apt-get when missing."""
    go = shutil.which("go")
    if go:
        return go
    log("go is missing: apt-get install golang-go")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "golang-go"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    go = shutil.which("go")
    if go is None:
        raise BenchError("golang-go installed but `go` is not on PATH")
    return go


def build_go() -> Path:
    """bench/go_client, the goroutine-per-connection peer of the multiplexer."""
    go = ensure_go()
    BUILD.mkdir(exist_ok=True)
    exe = BUILD / "go_client"
    subprocess.run(
        [go, "build", "-o", str(exe), "."], cwd=HERE / "go_client", check=True, capture_output=True
    )
    return exe


# --------------------------------------------------------------------------- processes


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


def c_loop_rate(stdout: str) -> float:
    return float(stdout.split()[0])


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "kernel": os.uname().release, "cpu": cpu}
