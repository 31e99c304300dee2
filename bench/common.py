"""What the bench sections share: the result row, paired runs and their
spread, the idle spinners, builds, peers, helpers.

Every figure in the table is a ratio against a peer measured in the same
invocation, because this 2-core machine is shared and noisy: an absolute
figure alone would say more about the neighbours than about tcplab. The two
arms run as pairs, back to back, who goes first alternating; a row's ratio
is the median of its paired ratios and the table shows their spread
(min-max) and how many pairs. A spread wider than SPREAD_LIMIT either way
of the median makes `paired()` add pairs (bounded) until the last ones
agree; a row that never settles is marked noisy, not hidden.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / "build"  # git-ignored: compiled peers
OUT = HERE / "out"  # git-ignored: results, recordings, run directories
PY = sys.executable

# A row is steady when every paired ratio of its window is within this
# fraction of their median (the "±10%").
SPREAD_LIMIT = 0.10


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
    # Raw figures per arm. With two lists of equal length, the first is the
    # value's arm and the second the peer's, paired by index (one round each).
    runs: dict[str, list[float]] = field(default_factory=dict)
    incomplete: bool = False  # measured only part of the way: the goal cannot be met
    ratios: list[float] = field(default_factory=list)  # the paired ratios `ratio` is the median of
    pairs_run: int = 0  # pairs measured in all (>= len(ratios) when the window slid)
    noisy: bool = False  # the paired ratios never came within SPREAD_LIMIT of their median
    # The goal's alternative, met, in words (loss_onset: "no loss at the most
    # this machine generated"): judge() counts the row as met.
    met_by: str = ""

    def judge(self) -> Row:
        """Fill `ratio` (median of the paired ratios, else value / peer), the
        spread, and `met` from `goal`."""
        if not self.ratios:
            self.ratios = paired_ratios(self.runs)
            self.pairs_run = self.pairs_run or len(self.ratios)
        if self.ratios:
            self.noisy = not steady(self.ratios)
            if self.ratio is None:
                self.ratio = median(self.ratios)
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
        self.met = self.met or bool(self.met_by)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def spread(self) -> tuple[float, float] | None:
        return (min(self.ratios), max(self.ratios)) if self.ratios else None


def failed_row(key: str, section: str, measure: str, unit: str, goal: str, why: str) -> Row:
    """A row whose measurement broke: shown, never silently left out."""
    return Row(key, section, measure, None, unit, goal=goal, note=f"not measured: {why}")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# --------------------------------------------------------------------------- pairs and spread


def paired_ratios(runs: dict[str, list[float]]) -> list[float]:
    """value / peer per round, from a row's `runs` (see Row.runs); [] when
    the runs are not two paired arms."""
    arms = list(runs.values())
    if len(arms) != 2 or len(arms[0]) != len(arms[1]):
        return []
    return [v / p for v, p in zip(arms[0], arms[1], strict=True) if p]


def steady(ratios: list[float], limit: float = SPREAD_LIMIT) -> bool:
    """Every ratio within `limit` of their median, either way."""
    mid = median(ratios)
    return bool(ratios) and all(abs(r / mid - 1) <= limit for r in ratios)


@dataclass
class Pairs:
    """Paired runs of two arms: value[i] and peer[i] ran back to back."""

    value: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    window: int = 0  # how many of the last pairs the row reports

    def last(self) -> tuple[list[float], list[float]]:
        n = self.window or len(self.value)
        return self.value[-n:], self.peer[-n:]

    @property
    def ratios(self) -> list[float]:
        vs, ps = self.last()
        return [v / p for v, p in zip(vs, ps, strict=True) if p]

    def row(
        self,
        key: str,
        section: str,
        measure: str,
        unit: str,
        peer_label: str,
        names: tuple[str, str],
        **kw: Any,
    ) -> Row:
        """The table row: medians of the window, its paired ratios, every run kept."""
        vs, ps = self.last()
        return Row(
            key, section, measure, median(vs), unit, median(ps), peer_label,
            runs={names[0]: self.value, names[1]: self.peer},
            ratios=self.ratios, pairs_run=len(self.value), **kw,
        )  # fmt: skip


def paired(
    value: Callable[[], float],
    peer: Callable[[], float],
    pairs: int,
    extra: int,
    deadline: float | None = None,
) -> Pairs:
    """`pairs` rounds of both arms, who goes first alternating; then, while
    the last `pairs` ratios are not steady, one more round, at most `extra`
    more (and none after `deadline`, a time.monotonic() value). The window
    slides: a burst of the neighbours' load leaves it, it is not averaged in."""
    out = Pairs(window=pairs)
    for r in range(pairs + extra):
        if r >= pairs and (steady(out.ratios) or (deadline and time.monotonic() > deadline)):
            break
        if r >= pairs:
            log(f"spread {min(out.ratios):.2f}-{max(out.ratios):.2f} is wider than "
                f"±{SPREAD_LIMIT:.0%}: one more pair")  # fmt: skip
        if r % 2 == 0:
            out.value.append(value())
            out.peer.append(peer())
        else:
            out.peer.append(peer())
            out.value.append(value())
    return out


# --------------------------------------------------------------------------- idle conditions


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
