"""A scenario's hosts and their link, made, changed and removed as one.

What lab/run.py asks of a two-host lab: check that the kernel can shape the
link as the scenario wants (before anything is made), make the namespaces
and the link, say in which namespace an actor runs, change the shaping when
a phase says so, and remove everything at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lab import netstat
from lab.capture import Capture
from lab.hosts import Hosts
from lab.link import Link
from lab.netns import LabNamespace
from lab.scenario import Scenario
from lab.shaping import check_supported
from lab.snapshots import Snapshotter
from lab.topology import phase_shapes


class HostLab:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.snapshots: Snapshotter | None = None
        self.capture: Capture | None = None
        self.hosts = Hosts(scenario.name, scenario.hosts)
        spec = scenario.link
        changes = [p.link for p in scenario.phases if p.link]
        lossy = {h for change in changes for h, knobs in change.items() if knobs.get("loss_pct")}
        self.link = (
            Link(spec, self.hosts.names(), shaped=bool(changes), lossy=lossy) if spec else None
        )
        self.shapes = phase_shapes(spec, changes) if spec else []
        # Per host: the kernel's TCP counters at the start and at the end.
        self.counters: dict[str, dict[str, dict[str, int]]] = {}

    def check(self) -> None:
        """Raise ShapingError (one line) if this kernel cannot shape as asked."""
        check_supported(self.shapes)

    def create(self, run_dir: Path, parent: LabNamespace | None = None) -> HostLab:
        """Namespaces (made from inside `parent`, see lab.hosts), link, and
        snapshots written into `run_dir`."""
        self.hosts.create(parent)
        try:
            self._count("start")
            if self.link is not None:
                self.link.create()
            self.snapshots = Snapshotter(self.hosts.names(), self.scenario.ports, run_dir).start()
            spec = self.scenario.capture
            if spec is not None:
                self.capture = Capture(spec, self.hosts[spec.host], run_dir).start()
        except BaseException:
            self.destroy()
            raise
        return self

    def namespace(self, host: str) -> LabNamespace:
        return self.hosts[host]

    def tick(self) -> None:
        """Called from the run's loop (every ~100 ms): an error that stopped
        the snapshots (taken on their own thread) ends the run there."""
        if self.snapshots is not None:
            self.snapshots.check()

    def reshape(self, change: dict[str, dict[str, float]]) -> None:
        if self.link is not None and change:
            self.link.reshape(change)

    def describe(self) -> dict[str, Any]:
        """What run.json keeps: namespaces, addresses, shaping and drop counts."""
        out: dict[str, Any] = {
            "hosts": {
                h: {"namespace": ns.name, "sysctls": ns.sysctls}
                for h, ns in self.hosts.namespaces.items()
            },
            "actors": {a.name: a.host for a in self.scenario.actors},
        }
        if self.counters:
            out["tcp_counters"] = self.counters
        if self.snapshots is not None:
            out["snapshots"] = self.snapshots.describe()
        if self.capture is not None:
            out["capture"] = self.capture.describe()
        if self.link is not None:
            spec = self.link.spec
            out["link"] = {
                "hosts": list(spec.hosts),
                "addresses": {h: self.link.address(h) for h in spec.hosts},
                "mtu": spec.mtu,
                "offloads": self.link.offloads,
                "egress": {h: vars(s) for h, s in self.link.shaper.shapes.items()},
                "drops": self.link.shaper.counters(),
            }
        return out

    def _count(self, when: str) -> None:
        for host, ns in self.hosts.namespaces.items():
            # When it was read: the report compares what the probes saw
            # between the two readings.
            reading = {**netstat.read(ns.name), "mono_ns": time.monotonic_ns()}
            self.counters.setdefault(host, {})[when] = reading

    def count_end(self) -> None:
        """The kernel's TCP counters at the end of what the probes saw (once)."""
        if self.counters and not any("end" in c for c in self.counters.values()):
            self._count("end")

    def destroy(self) -> None:
        self.count_end()  # a run that stopped before its probes did
        if self.capture is not None:
            self.capture.stop()
        if self.snapshots is not None:
            self.snapshots.close()
        if self.link is not None:
            self.link.destroy()
        self.hosts.destroy()
