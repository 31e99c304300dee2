"""Running the real `tcplab` command in tests, and checking what a run left.

The lab tests drive the installed console script (.venv/bin/tcplab) as a
user does, read its --json status lines with a deadline, and check that a
run left nothing behind: its processes, its namespace, its bus directory,
the BPF programs its probe process loaded. in_ns() runs a call inside a
lab namespace; free_port() picks a loopback port nobody listens on.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import netns

from bus.endpoints import BUS_DIR_PREFIX
from lab.netns import PREFIX

ROOT = Path(__file__).resolve().parent.parent
TCPLAB = str(Path(sys.executable).parent / "tcplab")
# Under software emulation (the 6.1 VM of `make test-kernels`, scripts/kernels/guest.sh)
# everything runs about 10x slower, BPF compilation most: guest.sh sets the factor.
SLOW = float(os.environ.get("TCPLAB_TEST_SLOW", "1"))
T = TypeVar("T")
# The running kernel's (major, minor): 5.10 in `make test-kernels KERNEL=debian11`.
KERNEL = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])

# A short scenario: a server, 3 clients' connections, two short phases.
SMALL = """
name = "{name}"
summary = "a small test scenario"

[lab]
ports = [{port}]

[[actors]]
name = "server"
role = "server"
args = ["--port", "{port}"]

[[actors]]
name = "client"
role = "client"
args = ["--target", "127.0.0.1:{port}", "--lines", "1", "--repeat", "3"]

[[phases]]
name = "listen"
duration_s = {listen_s}
commands = [{{ actor = "server", name = "start" }}]

[[phases]]
name = "clients"
duration_s = {clients_s}
commands = [{{ actor = "client", name = "start" }}]

[expected.outcomes]
clean = "{clean}"
"""


def small_scenario(
    directory: Path,
    name: str = "small",
    *,
    port: int | None = None,
    listen_s: float = 0.5,
    clients_s: float = 1.0,
    clean: str = ">=3",
    extra: str = "",
) -> Path:
    """A small scenario file. Its port is drawn below the ephemeral range: the
    probes filter by port, not by namespace, so a lab elsewhere on this
    machine using the same port (other test runs) would add its connections."""
    port = port or random.randrange(20000, 30000)
    extra = extra.replace("{port}", str(port))
    path = directory / f"{name}.toml"
    path.write_text(
        SMALL.format(name=name, port=port, listen_s=listen_s, clients_s=clients_s, clean=clean)
        + extra
    )
    return path


def tcplab(
    *args: str, timeout: float = 300, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command line, to the end; `user` runs it as that user."""
    argv = [TCPLAB, *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout * SLOW)


class LiveRun:
    """`tcplab run ... --json` in the background, read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [TCPLAB, "run", *args, "--json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.pids: dict[str, int] = {}
        # The BPF programs the run's probe process holds, once it holds them.
        self.programs: set[int] = set()
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        if not self._sel.select(max(0.0, deadline - time.monotonic())):
            return None
        line = self.proc.stdout.readline()
        if not line:
            return None
        status = json.loads(line)
        self.lines.append(status)
        for name, actor in status.get("actors", {}).items():
            self.pids[name] = actor["pid"]
        if "probes" in self.pids and not self.programs:
            self.programs = bpf_programs_of(self.pids["probes"])
        return status

    def wait_phase(self, phase: str, timeout: float = 120) -> dict[str, Any]:
        """The first status line of `phase` (the view prints one at each new phase)."""
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            status = self._next(deadline)
            if status is None:
                break
            if status.get("phase") == phase:
                return status
        seen = [s.get("phase") for s in self.lines]
        raise AssertionError(f"phase {phase!r} never came; saw {seen}")

    def wait_programs(self, timeout: float = 120) -> set[int]:
        deadline = time.monotonic() + timeout * SLOW
        while not self.programs and time.monotonic() < deadline:
            if "probes" in self.pids:
                self.programs = bpf_programs_of(self.pids["probes"])
            if not self.programs and self._next(min(deadline, time.monotonic() + 0.2)) is None:
                time.sleep(0.05)
        return self.programs

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout * SLOW)
        for line in out.splitlines():
            if line.startswith("{"):
                self.lines.append(json.loads(line))
        return self.proc.returncode, out, err

    def result(self) -> dict[str, Any]:
        """The final line: run_dir, exit_code, errors, summary."""
        return next(s for s in reversed(self.lines) if "exit_code" in s)


def bpf_programs_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (from its fdinfo)."""
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return set()
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def loaded_programs() -> set[int]:
    out = subprocess.run(
        ["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True
    )
    return {p["id"] for p in json.loads(out.stdout)}


def group_members(*pgids: int) -> list[int]:
    """Live processes whose process group is one of `pgids`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pgrp is the 5th field, after "pid (comm) state ppid".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) in pgids and fields[0] != "Z":
            members.append(int(entry))
    return members


def leftovers(orchestrator_pid: int, pids: set[int], programs: set[int]) -> list[str]:
    """What of a run still exists: processes (and their groups), its
    namespace, its bus directory, the BPF programs it loaded."""
    left = [f"process {p}" for p in group_members(*pids)]
    left += [n for n in netns.listnetns() if n.startswith(f"{PREFIX}{orchestrator_pid}-")]
    tmp = Path(tempfile.gettempdir())
    left += [str(p) for p in tmp.glob(f"{BUS_DIR_PREFIX}{orchestrator_pid}-*")]
    left += [f"BPF program {i}" for i in programs & loaded_programs()]
    return left


def wait_nothing_left(
    orchestrator_pid: int,
    pids: set[int],
    programs: set[int],
    timeout: float = 30,
    but: tuple[str, ...] = (),
) -> list[str]:
    """leftovers(), polled until none is left but those starting with one of
    `but`, or the deadline (exits take a moment)."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        left = leftovers(orchestrator_pid, pids, programs)
        if all(x.startswith(but) for x in left) if but else not left:
            return left
        if time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def in_ns(name: str, fn: Callable[[], T]) -> T:
    """fn() with this thread in network namespace `name` (sockets it makes
    belong there), then back where the thread was."""
    netns.pushns(name)
    try:
        return fn()
    finally:
        netns.popns()


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
