"""The processes of a run: spawned each in its own process group, reaped
with their exit codes, stopped in order. A crash is recorded, never
silently restarted (circus's arbiter -> watcher -> process, kept small).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Process:
    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_mono_ns: int = field(default_factory=time.monotonic_ns)
    exit_code: int | None = None
    # Exited with a failure status that the orchestrator's own stop did not cause.
    crashed: bool = False
    ended_mono_ns: int | None = None

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
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Process(name, role, popen, log_path)
        self.processes[name] = proc
        return proc

    def reap(self) -> list[Process]:
        """Processes that exited since the last call, with their status recorded."""
        ended = []
        for proc in self.processes.values():
            if proc.exit_code is None and proc.popen.poll() is not None:
                self._record_exit(proc)
                ended.append(proc)
        return ended

    def _record_exit(self, proc: Process) -> None:
        proc.exit_code = proc.popen.returncode
        proc.ended_mono_ns = time.monotonic_ns()
        # A negative code is a signal; the signals of our own stop are no crash.
        ours = self.stopping and proc.exit_code in (-signal.SIGTERM, -signal.SIGKILL)
        proc.crashed = proc.exit_code != 0 and not ours

    def alive(self) -> list[Process]:
        return [p for p in self.processes.values() if p.exit_code is None]

    def wait(self, names: list[str], timeout_s: float) -> list[str]:
        """Wait for the named processes to exit; return those still running."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.reap()
            running = [n for n in names if self.processes[n].exit_code is None]
            if not running or time.monotonic() >= deadline:
                return running
            time.sleep(0.02)

    def stop(self, names: list[str], grace_s: float = 5.0) -> None:
        """SIGTERM the named process groups, SIGKILL what outlives `grace_s`."""
        self.stopping = True
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            running = [n for n in names if self.processes[n].exit_code is None]
            for name in running:
                try:
                    os.killpg(self.processes[name].pid, sig)
                except ProcessLookupError:
                    pass
            if not self.wait(running, wait_s):
                return

    def stop_all(self, grace_s: float = 5.0) -> None:
        self.stop(list(self.processes), grace_s)
