"""The probes streaming into a hub of this process, and their loss ledger:
what the Observation overhead and Event loss sections attach to their load.

Every connection goes to 127.0.0.1; the probes follow one port and the
pids the section names.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.common import PY, BenchError
from bench.procs import stop
from bus.endpoints import ipc_endpoints, make_run_dir
from bus.hub import Hub
from bus.rawbatch import count
from bus.schema import Kind

PROBE_READY_S = 120.0  # BPF compilation takes seconds per program on 2 cores
SETTLE_S = 0.4  # no new kernel batch for this long: the pipeline is drained


@dataclass
class Loss:
    """Events the kernel produced against what reached the hub."""

    counted: int = 0  # handed to the ring by the BPF programs
    drops: int = 0  # refused by a full ring
    received: int = 0  # arrived at the hub in KERNEL (or KERNEL_RAW) batches
    gaps: int = 0  # bus sequence gaps
    rejected: int = 0  # bus frames the hub could not accept
    drops_by_probe: Counter[str] = field(default_factory=Counter)

    @property
    def lost(self) -> int:
        return self.drops + max(0, self.counted - self.received) + self.gaps + self.rejected

    def add(self, other: Loss) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class ProbeSession:
    """`python -m probes` streaming into a Hub owned by this process.

    The hub is drained by `pump()`; KERNEL batches are counted per probe and
    the probes' STATS (cumulative events and drops per program) kept.
    """

    def __init__(self, port: int) -> None:
        self.bus_dir = make_run_dir()
        ep = ipc_endpoints(self.bus_dir)
        self.hub = Hub(ep.events, ep.control)
        self.err = tempfile.TemporaryFile()
        argv = [PY, "-m", "probes", "--quiet", *ep.as_args(), "--name", "probes"]
        self.proc = subprocess.Popen([*argv, "--port", str(port)], stderr=self.err)
        self.received: Counter[str] = Counter()
        self.stats: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None
        # Per program, the fullest its ring was (bytes) since take_peaks():
        # each STATS carries the peak of its second only.
        self.ring_peaks: Counter[str] = Counter()
        try:
            deadline = time.monotonic() + PROBE_READY_S
            while not (self.hub.actors.get("probes") and self.hub.actors["probes"].ready):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.err.seek(0)
                    why = self.err.read().decode(errors="replace")[-600:]
                    raise BenchError(f"python -m probes did not get ready: {why}")
                self.pump(100)
        except BaseException:
            self.close()
            raise

    def pump(self, timeout_ms: int) -> int:
        """Take what arrived; return the number of kernel events in it."""
        n = 0
        for _channel, env in self.hub.poll(timeout_ms):
            if env.kind is Kind.KERNEL or env.kind is Kind.KERNEL_RAW:
                k = count(env.body) if env.kind is Kind.KERNEL_RAW else len(env.body["events"])
                self.received[str(env.body.get("probe"))] += k
                n += k
            elif env.kind is Kind.STATS and env.body.get("source") == "probes":
                self.stats = env.body
                for name, p in env.body.get("programs", {}).items():
                    self.ring_peaks[name] = max(self.ring_peaks[name], int(p.get("ring_peak", 0)))
                if env.body.get("final"):
                    self.final = env.body
        return n

    def settle(self, quiet_s: float = SETTLE_S, limit_s: float = 15.0) -> None:
        """Pump until no kernel batch has come for `quiet_s`."""
        deadline = time.monotonic() + limit_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            if self.pump(50):
                quiet_since = time.monotonic()

    def fresh_stats(self) -> dict[str, Any]:
        """The next STATS (sent every second): counters as of now."""
        seen = self.stats
        deadline = time.monotonic() + 5
        while self.stats is seen and time.monotonic() < deadline:
            self.pump(50)
        return self.stats

    def take_peaks(self) -> Counter[str]:
        """The rings' peaks since the last call, by program; starts a new window."""
        peaks, self.ring_peaks = self.ring_peaks, Counter()
        return peaks

    def set_pids(self, pids: list[int]) -> None:
        ack = self.hub.command("probes", "set", {"pids": pids}, timeout_s=10)
        if not ack.body["ok"]:
            raise BenchError(f"probes refused set pids: {ack.body.get('error')}")

    def run_while(self, procs: list[subprocess.Popen[Any]], limit_s: float = 120) -> None:
        deadline = time.monotonic() + limit_s
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                for p in procs:
                    stop(p)
                raise BenchError(f"load did not finish in {limit_s:g}s")
            self.pump(50)

    def close(self) -> Loss:
        """Stop the probes, take everything they still send; their loss ledger."""
        try:
            if self.proc.poll() is None and self.hub.actors.get("probes"):
                self.hub.send_command("probes", "stop")
                deadline = time.monotonic() + 20
                while "probes" not in self.hub.events_ledger.eof_seq:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        break
                    self.pump(50)
                self.settle(0.2, 3)
        finally:
            stop(self.proc)
            self.hub.close()
            shutil.rmtree(self.bus_dir, ignore_errors=True)
            self.err.close()
        programs = (self.final or self.stats).get("programs", {})
        ledger = self.hub.events_ledger
        return Loss(
            counted=sum(int(p.get("events", 0)) for p in programs.values()),
            drops=sum(int(p.get("drops", 0)) for p in programs.values()),
            received=sum(self.received.values()),
            gaps=len(ledger.gaps),
            rejected=sum(ledger.rejected.values()),
            drops_by_probe=Counter({k: int(p.get("drops", 0)) for k, p in programs.items()}),
        )
