"""`tcplab trace`: any program, traced where it runs, as a run directory.

    tcplab trace -- examples/go/bin/server -addr 127.0.0.1:8080
    tcplab trace -p 4242 --duration 30

A trace is a run of a scenario made on the spot: one foreign actor (the
command, run by actors/foreign.py on the host, its lines as records) or,
with -p, none (the process is already running; its output is not ours to
read). There is no lab namespace. The probes trace the program's process
tree (children found by looking again every TREE_EVERY_S) and, for
tcp_state, any socket on the ports the tree listens on: an accepted
socket's transitions run in its peer's context. The run ends when the
program exits, at --duration, or on Ctrl-C, and writes the same run
directory as `tcplab run`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from lab import proctree
from lab.netns import LabNamespace
from lab.run import PROBE_READY_S, PROBES, LabRun, RunOptions
from lab.scenario import FOREIGN, MAX_PHASE_S, ActorSpec, Command, Phase, Scenario
from probes.plan import DEFAULT_PROBES, OWNER_PROBES

TREE_EVERY_S = 0.2


class HostPlace(LabNamespace):
    """Where a trace runs: the host itself. Nothing to make or remove."""

    def __init__(self) -> None:
        self.name = "host"
        self.sysctls: dict[str, Any] = {}

    def create(self) -> HostPlace:
        return self

    def command(self, argv: list[str]) -> list[str]:
        return argv

    def destroy(self) -> None:
        pass


def trace_scenario(
    command: list[str],
    pid: int | None,
    duration_s: float | None,
    stop_signal: str,
    ports: list[int],
) -> Scenario:
    """The scenario of one trace: the command as a foreign actor, or nothing
    to start for -p; one phase until the program ends or the duration."""
    label = actor_name(command, pid)
    if command:
        args = [
            "--command",
            json.dumps(command),
            "--cwd",
            str(Path.cwd()),
            "--stop-signal",
            stop_signal,
            "--gate",
        ]
        actors = [ActorSpec(label, FOREIGN, args)]
        commands = [Command(label, "start")]
        until = [label]
    else:
        actors, commands, until = [], [], []
    name = f"trace-{label}"
    what = " ".join(command) if command else f"pid {pid}"
    return Scenario(
        name=name,
        summary=f"tcplab trace of {what}",
        description="",
        path=Path("<trace>"),
        sysctls={},
        ports=ports,
        actors=actors,
        phases=[Phase("trace", duration_s or MAX_PHASE_S, commands, until)],
        expected={},
    )


def actor_name(command: list[str], pid: int | None) -> str:
    """What the summary calls the traced program: its file name, or the
    process's name for -p."""
    if command:
        label = Path(command[0]).name
    else:
        try:
            label = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            label = f"pid{pid}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:40] or "program"


class TraceRun(LabRun):
    def __init__(self, scenario: Scenario, options: RunOptions, pid: int | None = None) -> None:
        super().__init__(scenario, options)
        self.ns = HostPlace()
        self.attached_pid = pid
        self.actor = scenario.name.removeprefix("trace-")
        if pid is not None:
            self.programs[self.actor] = pid
        self.traced: set[int] = set()
        self.listening: set[int] = set()
        self._next_look = 0.0

    def _start_probes(self) -> None:
        if self.halted:
            return
        self.phase = "attaching probes"
        # Nothing passes until the pids are known (a pid filter of the
        # orchestrator itself, which makes no TCP connections of its own).
        args = ["--either", "--pid", str(os.getpid())]
        # Owners and the syscall barrier (EOF read, close) too: a foreign
        # program says nothing of its fds, the kernel does.
        args += [a for p in (*DEFAULT_PROBES, *OWNER_PROBES) for a in ("--probe", p)]
        args += [a for port in self.scenario.ports for a in ("--port", str(port))]
        self.sup.spawn(PROBES, PROBES, self._python("probes", PROBES, args))
        self._wait_ready([PROBES], PROBE_READY_S)

    def _follow_spawned(self, pids: list[int]) -> None:
        """Nothing: the probes pass nothing until the program's tree is known."""

    def _share_pids(self) -> None:
        """The program's tree, not the relay (a Python process on the bus)."""
        self._look(force=True)

    def _look(self, force: bool = False) -> None:
        """Find the tree's new processes and listening ports; tell the probes."""
        roots = set(self.programs.values())
        if not roots:
            return
        pids = proctree.tree(roots)
        ports = proctree.listening_ports(pids) | set(self.scenario.ports)
        if not force and pids <= self.traced and ports <= self.listening:
            return
        self.traced |= pids
        self.listening |= ports
        for pid in sorted(pids - set(self.programs.values())):
            # The correlator names a child by its root's actor.
            self.programs[f"{self.actor} (child {pid})"] = pid
        self._command(
            PROBES,
            "set",
            {"pids": sorted(self.traced), "ports": sorted(self.listening), "either": True},
        )

    def _wait_program(self, actor: str) -> bool:
        """The probes follow the program's pid now: let it run (it waited
        at its relay's gate, so that its first connections are seen)."""
        return self._command(actor, "set", {"release": True})

    def _pump(self, timeout_ms: int) -> None:
        super()._pump(timeout_ms)
        now = time.monotonic()
        if now >= self._next_look and PROBES in self.sup.processes:
            self._next_look = now + TREE_EVERY_S
            self._look()

    def _phase_over(self) -> bool:
        """-p: the run ends when the process it attached to has gone."""
        return self.attached_pid is not None and not proctree.alive(self.attached_pid)

    def meta(self) -> dict[str, Any]:
        out = super().meta()
        out["trace"] = {
            "pid": self.attached_pid,
            "pids": sorted(self.traced),
            "ports": sorted(self.listening),
        }
        return out


STOP_SIGNALS = tuple(
    s.name for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL)
)
