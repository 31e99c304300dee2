"""One run of a scenario, start to finish.

Order matters: the namespace and the bus first, then the probes (and wait
until every program is attached, or the first connections go unseen), then
the actors, then the phases; on the way out the actors stop first, so the
probes still see their last transitions, then the probes, then a final drain
of the bus. Ctrl-C and SIGTERM take the same way out, so whatever arrived is
recorded, nothing new starts, and nothing is left behind.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bus.endpoints import Endpoints, ipc_endpoints, make_run_dir
from bus.hub import Hub
from bus.rawconvert import state_counts
from bus.transport import BusError, Channel
from lab.hostlab import HostLab
from lab.live import LiveView
from lab.netns import LabNamespace, NamespaceError
from lab.recording import Recorder, unique_run_dir, write_meta
from lab.scenario import FOREIGN, Scenario
from lab.shaping import ShapingError
from lab.stale import sweep
from lab.supervisor import PROBES, Supervisor
from lab.tally import Tally
from probes.plan import DEFAULT_PROBES, INTERNALS, OWNER_PROBES

PROBE_READY_S = 90.0  # BPF compilation takes seconds per program on 2 cores
ACTOR_READY_S = 30.0
# A foreign program's relay gives up after 10 s (actors/foreign.py READY_S).
PROGRAM_READY_S = 15.0
EOF_WAIT_S = 10.0
# Errors that end a run early but are no bug: recorded in run.json, and the
# run still tears down and writes what it can.
RUN_ERRORS = (BusError, OSError, NamespaceError, ShapingError)


@dataclass
class RunOptions:
    runs_dir: Path = Path("runs")
    view: str = "live"  # live | quiet | json


class LabRun:
    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario
        self.options = options
        # Until execute() makes it: where the run directory will go.
        self.run_dir = options.runs_dir / f"<time>-{scenario.name}"
        self.tally = Tally()
        self.phases: list[dict[str, Any]] = []
        self.interrupted = False
        # The run broke (a crash of the probes, the bus or the disk): it stops
        # early, and its exit code says so.
        self.failed = False
        self.teardown_errors: list[str] = []
        self.phase = "setup"
        self.started_wall = time.time()
        self.started_mono_ns = time.monotonic_ns()
        self.phases_started_mono_ns: int | None = None
        self._stopping_probes = False
        self._recording_lost = False
        self.ns = LabNamespace(scenario.name, scenario.sysctls)
        self.hostlab = HostLab(scenario) if scenario.hosts else None
        self.sup = Supervisor(self.run_dir / "logs")
        self.view = LiveView(options.view, scenario.name, scenario.duration_s)
        self.bus_dir: Path | None = None
        self.endpoints: Endpoints | None = None
        self._hub: Hub | None = None
        self._recorder: Recorder | None = None
        # Foreign actors' programs (actors/foreign.py): actor -> the pid its
        # `start` answered with. The probes and observers follow them too.
        self.programs: dict[str, int] = {}

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise BusError("the run's bus is not open")
        return self._hub

    # -- signals ---------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # No exception from a signal handler: the loop notices the flag and
        # takes the ordinary way out, which records and cleans up.
        if not self.interrupted:
            self.tally.errors.append(
                f"interrupted by {signal.Signals(signum).name} during {self.phase}"
            )
        self.interrupted = True

    @property
    def halted(self) -> bool:
        """Nothing new may start: interrupted, or the run broke."""
        return self.interrupted or self.failed

    # -- the run ---------------------------------------------------------------
    def execute(self) -> Path:
        """Run the scenario; ShapingError (one line) before anything is made
        if this kernel cannot shape its link as asked."""
        if self.hostlab is not None:
            self.hostlab.check()
        self.run_dir = unique_run_dir(self.options.runs_dir, self.scenario.name)
        self.sup.log_dir = self.run_dir / "logs"
        self.started_wall = time.time()
        self.started_mono_ns = time.monotonic_ns()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            sweep()
            self.bus_dir = make_run_dir()
            self.endpoints = ipc_endpoints(self.bus_dir)
            self._recorder = Recorder(self.run_dir)
            # The live loop only counts the actors' records (the recording keeps
            # them whole): typed, the hub checks and decodes each in one pass.
            self._hub = Hub(
                self.endpoints.events, self.endpoints.control, record=self._record, typed_log=True
            )
            self.ns.create()
            if self.hostlab is not None:
                self.hostlab.create(self.run_dir, parent=self.ns)
            with self.view:
                try:
                    self._start_probes()
                    self._start_actors()
                    self._run_phases()
                finally:
                    self._stop()
        except RUN_ERRORS as e:
            self._fail(str(e))
        finally:
            self._teardown()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.run_dir

    def _fail(self, error: str) -> None:
        self.failed = True
        self.tally.errors.append(error)

    def _record(self, channel: Channel, frame: bytes) -> None:
        if channel is not Channel.EVENTS or self._recorder is None or self._recording_lost:
            return
        try:
            self._recorder.append(frame)
        except OSError as e:
            # A full disk: the run stops (halted) the ordinary way; what
            # arrives meanwhile cannot be kept.
            self._recording_lost = True
            self._fail(
                f"the recording in {self.run_dir} stopped after "
                f"{self._recorder.frames} frames: {e.strerror}; the run stopped"
            )

    def _python(self, module: str, name: str, args: list[str]) -> list[str]:
        # --quiet: every record goes to the bus; stderr (logs/NAME.log) keeps
        # what is not a record, such as a traceback, not a second copy.
        assert self.endpoints is not None
        return [
            sys.executable,
            "-m",
            module,
            *args,
            *self.endpoints.as_args(),
            "--name",
            name,
            "--quiet",
        ]

    def _start_probes(self) -> None:
        if self.halted:
            return
        self.phase = "attaching probes"
        args = [a for port in self.scenario.ports for a in ("--port", str(port))]
        if self.scenario.internals:
            args.append("--internals")
        if self.scenario.owners:
            # --probe replaces the default set: name it all.
            wanted = (
                *DEFAULT_PROBES,
                *OWNER_PROBES,
                *(INTERNALS if self.scenario.internals else ()),
            )
            args += [a for p in wanted for a in ("--probe", p)]
        self.sup.spawn(PROBES, PROBES, self._python("probes", PROBES, args))
        self._wait_ready([PROBES], PROBE_READY_S)

    def _start_actors(self) -> None:
        if self.halted:
            return
        self.phase = "starting actors"
        # One at a time, in the scenario's order: an actor sets up before it
        # says ready (a server listens, a pool connects), so a pool listed
        # after its server finds it listening.
        spawned: list[int] = []
        for a in self.scenario.actors:
            if self.halted:
                return
            ns = self.hostlab.namespace(a.host) if self.hostlab and a.host else self.ns
            argv = ns.command(self._python(f"actors.{a.role}", a.name, a.args))
            spawned.append(self.sup.spawn(a.name, a.role, argv).pid)
            self._follow_spawned(spawned)
            self._wait_ready([a.name], ACTOR_READY_S)
        if self.halted:
            return
        self._share_pids()

    def _follow_spawned(self, pids: list[int]) -> None:
        """The probes follow the lab's pids from its first actor on: until
        then they pass every socket on the lab's ports, those of another run
        of the same scenario on this machine too."""
        self._command(PROBES, "set", {"pids": pids})

    def _share_pids(self) -> None:
        """The probes' syscall programs trace only the lab's processes (the
        actors and the programs foreign actors started), and the observer
        counts their open fds."""
        pids = [self.sup.processes[a.name].pid for a in self.scenario.actors]
        pids += self.programs.values()
        self._command(PROBES, "set", {"pids": pids})
        for a in self.scenario.actors:
            if a.role == "observer":
                self._command(a.name, "set", {"pids": pids})

    def _wait_ready(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.halted:
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
            return False
        pid = (ack.body.get("result") or {}).get("pid")
        if name == "start" and isinstance(pid, int) and actor != PROBES:
            self.programs[actor] = pid
            self._share_pids()
            return self._wait_program(actor)
        return True

    def _foreign(self) -> set[str]:
        return {a.name for a in self.scenario.actors if a.role == FOREIGN}

    def _wait_program(self, actor: str) -> bool:
        """The probes follow the program's pid now: let it go from its
        relay's gate. With a ready port, wait until its relay says the
        program listens (or cannot). One that cannot breaks the run."""
        if not self._command(actor, "set", {"release": True}):
            return False
        spec = next(a for a in self.scenario.actors if a.name == actor)
        if "--ready-port" not in spec.args:
            return True
        deadline = time.monotonic() + PROGRAM_READY_S
        while not self.halted:
            listening = self.tally.progress.get(actor, {}).get("listening")
            if listening is True:
                return True
            if listening is False or time.monotonic() > deadline:
                why = self.tally.progress.get(actor, {}).get("error") or (
                    f"no word from its relay in {PROGRAM_READY_S:g}s"
                )
                self._fail(f"{actor}: {why}; see {self.sup.processes[actor].log_path}")
                return False
            self._pump(20)
        return False

    def _run_phases(self) -> None:
        if self.halted:
            return
        self.phases_started_mono_ns = time.monotonic_ns()
        for phase in self.scenario.phases:
            if self.halted:
                break
            self.phase = phase.name
            start_ns = time.monotonic_ns()
            if self.hostlab is not None:
                self.hostlab.reshape(phase.link)
            for c in phase.commands:
                if c.name == "stop" and c.actor in self._foreign():
                    # A foreign program is stopped by its relay, which stays
                    # to record its end (ending the relay would be a crash).
                    self._command(c.actor, "set", {"stop_program": True})
                else:
                    self._command(c.actor, c.name, c.args)
            while not self.halted:
                if time.monotonic_ns() - start_ns >= phase.duration_s * 1e9:
                    break
                if phase.until_done and all(self._done(a) for a in phase.until_done):
                    break
                if self._phase_over():
                    break
                self._pump(100)
            self.phases.append(
                {"name": phase.name, "start_mono_ns": start_ns, "end_mono_ns": time.monotonic_ns()}
            )

    def _phase_over(self) -> bool:
        """Whether something other than time or actors ends the phase (a trace's process)."""
        return False

    def _done(self, name: str) -> bool:
        """The actor finished its work (said so in its progress), or ended."""
        return name in self.tally.finished or self._ended(name)

    def _ended(self, name: str) -> bool:
        """The actor said eof or its process is gone: nothing more will come."""
        proc = self.sup.processes.get(name)
        return name in self.hub.events_ledger.eof_seq or proc is None or proc.exit_code is not None

    def _pump(self, timeout_ms: int) -> None:
        for _channel, env in self.hub.poll(timeout_ms):
            self.tally.add(env)
        for proc in self.sup.reap():
            self.hub.forget(proc.name)
            if proc.name == PROBES and not self._stopping_probes:
                self._probes_lost(proc.exit_code)
            elif proc.crashed:
                self.tally.errors.append(
                    f"{proc.name} (pid {proc.pid}) ended with exit code {proc.exit_code} "
                    f"during {self.phase}, before the run stopped it; see {proc.log_path}"
                )
        if self.hostlab is not None:
            self.hostlab.tick()
        self.view.refresh(self.status())

    def _probes_lost(self, exit_code: int | None) -> None:
        """The probe process ended before the run stopped it: the kernel view
        ended at its last frame. The run stops; what came so far is kept."""
        proc = self.sup.processes[PROBES]
        proc.crashed = True
        proc.ended_mono_ns = min(
            proc.ended_mono_ns or time.monotonic_ns(),
            self.tally.probes_last_mono_ns or proc.started_mono_ns,
        )
        at_s = (proc.ended_mono_ns - self.started_mono_ns) / 1e9
        self._fail(
            f"the probes (pid {proc.pid}) ended with exit code {exit_code} during {self.phase}: "
            f"the kernel view ended {at_s:.1f}s into the run, so the run stopped; "
            f"see {proc.log_path}"
        )

    def _drain_until(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self._ended(n) for n in names):
            self._pump(50)

    def _stop(self) -> None:
        self.phase = "stopping"
        self.sup.stopping = True
        actors = [a.name for a in self.scenario.actors if a.name in self.sup.processes]
        self._stop_in_order(actors)
        # The probes go last: the actors' final transitions must be seen.
        self._stopping_probes = True
        if self.hostlab is not None:
            # The kernel's counters as the probes stop watching: what either
            # sees afterwards (a FIN retransmitted at teardown) the other does not.
            self.hostlab.count_end()
        self._stop_in_order([PROBES] if PROBES in self.sup.processes else [])
        # Whatever is still queued on the bus is part of the run.
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.3:
            envs = self.hub.poll(50)
            for _c, env in envs:
                self.tally.add(env)
            if envs:
                quiet_since = time.monotonic()
        # The view's last picture shows everything stopped.
        self.view.refresh(self.status())

    def _stop_in_order(self, names: list[str]) -> None:
        """Ask the ready ones to stop and wait for their eof; then end them all
        (one that never said ready has nothing to flush: no waiting for it)."""
        told = [
            n
            for n in names
            if self._is_ready(n)
            and self.sup.processes[n].exit_code is None
            and self._command(n, "stop", {})
        ]
        self._drain_until(told, EOF_WAIT_S)
        # The grace of a process slow to end lasts up to 10 s: the bus is
        # served meanwhile, or the probes (stopped last) miss the heartbeat
        # and end as if the orchestrator were lost (exit code 3).
        self.sup.stop(names, idle=self._serve_bus)

    def _serve_bus(self) -> None:
        """Heartbeats out and frames in for up to 20 ms, without the loop's other work."""
        for _channel, env in self.hub.poll(20):
            self.tally.add(env)

    def _teardown(self) -> None:
        """Every step runs whatever failed before it; failures go into one
        line (teardown_errors) and run.json."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("stop the processes", lambda: self.sup.stop_all(grace_s=2.0)),
            ("close the bus", self._close_hub),
            ("close the recording", self._close_recorder),
            ("remove the namespace", self.ns.destroy),
            ("remove the hosts and their link", self._destroy_hostlab),
            ("remove the bus directory", self._remove_bus_dir),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as e:  # every later step must still run
                self.teardown_errors.append(f"{what}: {e}")
        if self.teardown_errors:
            self._fail("teardown: " + "; ".join(self.teardown_errors))
        try:
            write_meta(self.run_dir, self.meta())
        except Exception as e:
            self.teardown_errors.append(f"write {self.run_dir}/run.json: {e}")
            self.failed = True

    def _destroy_hostlab(self) -> None:
        if self.hostlab is not None:
            self.hostlab.destroy()

    def _close_hub(self) -> None:
        if self._hub is not None:
            self._hub.close()

    def _close_recorder(self) -> None:
        if self._recorder is not None:
            self._recorder.close()

    def _remove_bus_dir(self) -> None:
        if self.bus_dir is not None:
            shutil.rmtree(self.bus_dir, ignore_errors=True)

    # -- what the view shows and run.json keeps --------------------------------
    def status(self) -> dict[str, Any]:
        tally, now = self.tally, time.monotonic_ns()
        ledger = self._hub.events_ledger if self._hub is not None else None
        phases_s = (now - self.phases_started_mono_ns) / 1e9 if self.phases_started_mono_ns else 0
        return {
            "scenario": self.scenario.name,
            "phase": self.phase,
            "elapsed_s": round((now - self.started_mono_ns) / 1e9, 1),
            "phases_elapsed_s": round(phases_s, 1),
            "states": tally.states,
            "kernel_states": state_counts(tally.kernel_states),
            "kernel_events": tally.kernel_events,
            "log_records": tally.log_records,
            "lost": {
                "kernel_drops": tally.kernel_drops,
                "bus_gaps": len(ledger.gaps) if ledger else 0,
                "bus_rejected": sum(ledger.rejected.values()) if ledger else 0,
            },
            "actors": {
                n: {"pid": p.pid, "exit_code": p.exit_code, "crashed": p.crashed}
                for n, p in self.sup.processes.items()
            },
            "progress": tally.progress,
            "errors": tally.errors[-3:],
        }

    def meta(self) -> dict[str, Any]:
        s = self.scenario
        hub = self._hub
        recorder = self._recorder
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
            **({"programs": self.programs} if self.programs else {}),
            "phases": self.phases,
            "bus": hub.events_ledger.summary() if hub else {},
            "control_bus": hub.control_ledger.summary() if hub else {},
            "bus_dir": str(self.bus_dir),
            "recording": {
                "frames": recorder.frames if recorder else 0,
                "bytes": recorder.bytes if recorder else 0,
            },
            "expected": s.expected,
            "interrupted": self.interrupted,
            "failed": self.failed,
            "errors": self.tally.errors,
            "progress": self.tally.progress,
        }
