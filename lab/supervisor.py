"""The processes of a run: spawned each in its own process group, reaped
with their exit codes, stopped in order. A crash is recorded, never
silently restarted (circus's arbiter -> watcher -> process, kept small).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The probe process's name in a run (its actors have the scenario's names).
PROBES = "probes"
# How much of a crashed process's log run.json keeps and the summary shows.
LAST_LINES = 10
# util-linux's setpriv asks the kernel to SIGTERM a child when the
# orchestrator dies (even by kill -9): the child then stops as if told to,
# and nothing of the run outlives it. It execs, so the pid stays the child's.
PDEATHSIG = ["setpriv", "--pdeathsig", "TERM", "--"]


def last_lines(path: Path, n: int = LAST_LINES) -> list[str]:
    """The last `n` lines of a log (read from its end: a log may be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            tail = f.read()
    except OSError:
        return []
    return tail.decode("utf-8", "replace").splitlines()[-n:]


@dataclass
class Process:
    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_mono_ns: int = field(default_factory=time.monotonic_ns)
    exit_code: int | None = None
    # Ended before the run stopped it, or with a failure status that the
    # orchestrator's own stop did not cause.
    crashed: bool = False
    ended_mono_ns: int | None = None
    # When the orchestrator saw it gone (ended_mono_ns may be earlier: for
    # the probes it is the end of the kernel view).
    reaped_mono_ns: int | None = None
    # The end of its log when it crashed: the reason, usually.
    last_lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def describe(self) -> dict[str, object]:
        return {
            "role": self.role,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "crashed": self.crashed,
            "log": self.log_path.name,
            "started_mono_ns": self.started_mono_ns,
            "ended_mono_ns": self.ended_mono_ns,
            "reaped_mono_ns": self.reaped_mono_ns,
            "last_lines": self.last_lines,
        }


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, Process] = {}
        self.stopping = False

    def spawn(self, name: str, role: str, argv: list[str]) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            # Own session = own process group: a signal to the group reaches
            # the actor's workers too, and the terminal's Ctrl-C does not hit
            # actors before the orchestrator has decided the order.
            popen = subprocess.Popen(
                [*PDEATHSIG, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Process(name, role, popen, log_path)
        self.processes[name] = proc
        return proc

    def reap(self) -> list[Process]:
        """Processes that exited since the last call, with their status recorded."""
        ended = []
        for proc in self.processes.values():
            if proc.exit_code is None and _exited(proc.pid):
                # Still a zombie, so its pid (= its group id) cannot have been
                # reused: SIGKILL what it leaves in its group (a multiplexer's
                # workers after a kill -9), then reap it.
                _killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait()
                self._record_exit(proc)
                ended.append(proc)
        return ended

    def _record_exit(self, proc: Process) -> None:
        proc.exit_code = proc.popen.returncode
        proc.ended_mono_ns = proc.reaped_mono_ns = time.monotonic_ns()
        # A process ends when the run stops it: before that, any exit (even
        # 0, e.g. after a stray Ctrl-C) is a crash. A negative code is a
        # signal; the signals of our own stop are no crash.
        ours = self.stopping and proc.exit_code in (-signal.SIGTERM, -signal.SIGKILL)
        proc.crashed = not self.stopping or (proc.exit_code != 0 and not ours)
        if proc.crashed:
            proc.last_lines = last_lines(proc.log_path)

    def alive(self) -> list[Process]:
        return [p for p in self.processes.values() if p.exit_code is None]

    def wait(
        self, names: list[str], timeout_s: float, idle: Callable[[], object] | None = None
    ) -> list[str]:
        """Wait for the named processes to exit; return those still running.
        `idle()`, if given, runs between the checks (it must wait a little
        itself); else a 20 ms sleep."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.reap()
            running = [n for n in names if self.processes[n].exit_code is None]
            if not running or time.monotonic() >= deadline:
                return running
            if idle is None:
                time.sleep(0.02)
            else:
                idle()

    def stop(
        self, names: list[str], grace_s: float = 5.0, idle: Callable[[], object] | None = None
    ) -> None:
        """SIGTERM the named process groups, SIGKILL what outlives `grace_s`;
        `idle()` runs while waiting (see wait())."""
        self.stopping = True
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            running = [n for n in names if self.processes[n].exit_code is None]
            for name in running:
                _killpg(self.processes[name].pid, sig)
            if not self.wait(running, wait_s, idle):
                return

    def stop_all(self, grace_s: float = 5.0) -> None:
        self.stop(list(self.processes), grace_s)


def _exited(pid: int) -> bool:
    """The child exited (it stays waitable: WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
