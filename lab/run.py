"""One run of a scenario, start to finish.

Order matters: the namespace and the bus first, then the probes (and wait
until every program is attached, or the first connections go unseen), then
the actors, then the phases; on the way out the actors stop first, so the
probes still see their last transitions, then the probes, then a final drain
of the bus. Ctrl-C and SIGTERM take the same way out, so whatever arrived is
recorded and nothing is left behind.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bus.endpoints import ipc_endpoints, make_run_dir
from bus.schema import Envelope, Kind
from bus.transport import BusError, Channel, Hub
from lab.hostlab import HostLab
from lab.live import LiveView
from lab.netns import LabNamespace, clean_stale
from lab.recording import Recorder, write_meta
from lab.scenario import Scenario
from lab.supervisor import Supervisor

PROBES = "probes"
PROBE_READY_S = 90.0  # BPF compilation takes seconds per program on 2 cores
ACTOR_READY_S = 30.0
EOF_WAIT_S = 10.0


@dataclass
class RunOptions:
    runs_dir: Path = Path("runs")
    view: str = "live"  # live | quiet | json


@dataclass
class Tally:
    """What the live view shows and run.json keeps: counts as they arrive."""

    log_records: int = 0
    kernel_events: dict[str, int] = field(default_factory=dict)
    kernel_drops: int = 0
    states: dict[str, int] = field(default_factory=dict)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Final reports of actors that said their work is done: kept apart from
    # `progress`, which the next periodic report (without `done`) replaces.
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, env: Envelope) -> None:
        body = env.body
        if env.kind is Kind.LOG:
            self.log_records += len(body["records"])
        elif env.kind is Kind.KERNEL:
            probe = str(body.get("probe", "?"))
            self.kernel_events[probe] = self.kernel_events.get(probe, 0) + len(body["events"])
        elif env.kind is Kind.STATS:
            source = body["source"]
            if source == "observer":
                self.states = dict(body.get("states", {}))
            elif source == PROBES:
                programs = body.get("programs", {})
                self.kernel_drops = sum(int(p.get("drops", 0)) for p in programs.values())
            else:
                self.progress[source] = body
                if body.get("done"):
                    self.finished[source] = body


class LabRun:
    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario
        self.options = options
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = options.runs_dir / f"{stamp}-{scenario.name}"
        self.tally = Tally()
        self.phases: list[dict[str, Any]] = []
        self.interrupted = False
        self.phase = "setup"
        self.hostlab = HostLab(scenario) if scenario.hosts else None

    # -- signals ---------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # No exception from a signal handler: the loop notices the flag and
        # takes the ordinary way out, which records and cleans up.
        self.interrupted = True
        self.tally.errors.append(f"interrupted by {signal.Signals(signum).name}")

    # -- the run ---------------------------------------------------------------
    def execute(self) -> Path:
        if self.hostlab is not None:
            self.hostlab.check()  # before anything is made: one line if the kernel cannot
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self.started_wall = time.time()
        self.started_mono_ns = time.monotonic_ns()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        clean_stale()
        self.ns = LabNamespace(self.scenario.name, self.scenario.sysctls)
        self.bus_dir = bus_dir = make_run_dir()
        self.endpoints = ipc_endpoints(bus_dir)
        self.recorder = Recorder(self.run_dir)
        self.hub = Hub(self.endpoints.events, self.endpoints.control, record=self._record)
        self.sup = Supervisor(self.run_dir / "logs")
        self.view = LiveView(self, self.options.view)
        try:
            self.ns.create()
            if self.hostlab is not None:
                self.hostlab.create()
            with self.view:
                self._start_probes()
                self._start_actors()
                self._run_phases()
                self._stop()
        except (BusError, OSError) as e:
            self.tally.errors.append(str(e))
            raise
        finally:
            self._teardown(bus_dir)
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.run_dir

    def _record(self, channel: Channel, frame: bytes) -> None:
        if channel is Channel.EVENTS:
            self.recorder.append(frame)

    def _python(self, module: str, name: str, args: list[str]) -> list[str]:
        # --quiet: every record goes to the bus; stderr (logs/NAME.log) keeps
        # what is not a record, such as a traceback, not a second copy.
        return [sys.executable, "-m", module, *args, *self.endpoints.as_args(), "--name", name,
                "--quiet"]

    def _start_probes(self) -> None:
        self.phase = "attaching probes"
        args = [a for port in self.scenario.ports for a in ("--port", str(port))]
        self.sup.spawn(PROBES, PROBES, self._python("probes", PROBES, args))
        self._wait_ready([PROBES], PROBE_READY_S)

    def _start_actors(self) -> None:
        self.phase = "starting actors"
        # One at a time, in the scenario's order: an actor sets up before it
        # says ready (a server listens, a pool connects), so a pool listed
        # after its server finds it listening.
        for a in self.scenario.actors:
            ns = self.hostlab.namespace(a.host) if self.hostlab and a.host else self.ns
            argv = ns.command(self._python(f"actors.{a.role}", a.name, a.args))
            self.sup.spawn(a.name, a.role, argv)
            self._wait_ready([a.name], ACTOR_READY_S)
        names = [a.name for a in self.scenario.actors]
        # Now the pids are known: the probes' syscall programs trace only the
        # lab's processes, and the observer counts their open fds.
        pids = [self.sup.processes[n].pid for n in names]
        self._command(PROBES, "set", {"pids": pids})
        for a in self.scenario.actors:
            if a.role == "observer":
                self._command(a.name, "set", {"pids": pids})

    def _wait_ready(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.interrupted:
            missing = [n for n in names if not self._is_ready(n)]
            if not missing:
                return
            dead = [n for n in missing if self.sup.processes[n].exit_code is not None]
            if dead or time.monotonic() > deadline:
                why = "exited" if dead else f"not ready after {timeout_s:g}s"
                logs = ", ".join(str(self.sup.processes[n].log_path) for n in dead or missing)
                raise BusError(f"{', '.join(dead or missing)} {why}; see {logs}")
            self._pump(100)

    def _is_ready(self, name: str) -> bool:
        state = self.hub.actors.get(name)
        return bool(state and state.ready)

    def _command(self, actor: str, name: str, args: dict[str, Any]) -> bool:
        try:
            ack = self.hub.command(actor, name, args, timeout_s=10.0)
        except BusError as e:
            self.tally.errors.append(str(e))
            return False
        if not ack.body["ok"]:
            self.tally.errors.append(f"{actor} refused {name}: {ack.body.get('error')}")
        return bool(ack.body["ok"])

    def _run_phases(self) -> None:
        for phase in self.scenario.phases:
            if self.interrupted:
                break
            self.phase = phase.name
            self.phase_started = time.monotonic()
            start_ns = time.monotonic_ns()
            if self.hostlab is not None:
                self.hostlab.reshape(phase.link)
            for c in phase.commands:
                self._command(c.actor, c.name, c.args)
            while not self.interrupted:
                if time.monotonic() - self.phase_started >= phase.duration_s:
                    break
                if phase.until_done and all(self._done(a) for a in phase.until_done):
                    break
                self._pump(100)
            self.phases.append(
                {"name": phase.name, "start_mono_ns": start_ns, "end_mono_ns": time.monotonic_ns()}
            )

    def _done(self, name: str) -> bool:
        """The actor finished its work (said so in its progress), or ended."""
        return name in self.tally.finished or self._ended(name)

    def _ended(self, name: str) -> bool:
        """The actor said eof or its process is gone: nothing more will come."""
        return (
            name in self.hub.events_ledger.eof_seq or self.sup.processes[name].exit_code is not None
        )

    def _pump(self, timeout_ms: int) -> None:
        for _channel, env in self.hub.poll(timeout_ms):
            self.tally.add(env)
        for proc in self.sup.reap():
            self.hub.forget(proc.name)
            if proc.crashed:
                self.tally.errors.append(
                    f"{proc.name} (pid {proc.pid}) crashed with exit code {proc.exit_code}; "
                    f"see {proc.log_path}"
                )
        self.view.refresh()

    def _drain_until(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self._ended(n) for n in names):
            self._pump(50)

    def _stop(self) -> None:
        self.phase = "stopping"
        self.sup.stopping = True
        actors = [a.name for a in self.scenario.actors]
        for name in actors:
            if self._is_ready(name) and self.sup.processes[name].exit_code is None:
                self._command(name, "stop", {})
        self._drain_until(actors, EOF_WAIT_S)
        self.sup.stop(actors)
        # The probes go last: the actors' final transitions must be seen.
        if self._is_ready(PROBES) and self.sup.processes[PROBES].exit_code is None:
            self._command(PROBES, "stop", {})
        self._drain_until([PROBES], EOF_WAIT_S)
        self.sup.stop([PROBES])
        # Whatever is still queued on the bus is part of the run.
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.3:
            envs = self.hub.poll(50)
            for _c, env in envs:
                self.tally.add(env)
            if envs:
                quiet_since = time.monotonic()

    def _teardown(self, bus_dir: Path) -> None:
        self.sup.stop_all(grace_s=2.0)
        self.hub.close()
        self.recorder.close()
        self.ns.destroy()
        if self.hostlab is not None:
            self.hostlab.destroy()
        shutil.rmtree(bus_dir, ignore_errors=True)
        write_meta(self.run_dir, self.meta())

    def meta(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "scenario": s.name,
            "summary": s.summary,
            "description": s.description,
            "started_wall": self.started_wall,
            "started_mono_ns": self.started_mono_ns,
            "ended_mono_ns": time.monotonic_ns(),
            "namespace": {"name": self.ns.name, "sysctls": s.sysctls},
            **({"lab": self.hostlab.describe()} if self.hostlab else {}),
            "actors": {n: p.describe() for n, p in self.sup.processes.items()},
            "phases": self.phases,
            "bus": self.hub.events_ledger.summary(),
            "control_bus": self.hub.control_ledger.summary(),
            "bus_dir": str(self.bus_dir),
            "recording": {"frames": self.recorder.frames, "bytes": self.recorder.bytes},
            "expected": s.expected,
            "interrupted": self.interrupted,
            "errors": self.tally.errors,
            "progress": self.tally.progress,
        }
