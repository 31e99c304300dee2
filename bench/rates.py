"""Connection rate, observation overhead and event loss: the bomber's sections.

All connections go to 127.0.0.1 (or inside a lab namespace); every loop is
bounded by a count and a time.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    HERE,
    OUT,
    PY,
    BenchError,
    Row,
    bomber_argv,
    bomber_rate,
    c_loop_rate,
    c_server,
    gated,
    log,
    median,
    py_server,
    release,
    stop,
)
from bus.endpoints import ipc_endpoints, make_run_dir
from bus.schema import Kind
from bus.transport import Hub

PROBE_READY_S = 120.0  # BPF compilation takes seconds per program on 2 cores
SETTLE_S = 0.4  # no new kernel batch for this long: the pipeline is drained


@dataclass
class Loss:
    """Events the kernel produced against what reached the hub."""

    counted: int = 0  # handed to the ring by the BPF programs
    drops: int = 0  # refused by a full ring
    received: int = 0  # arrived at the hub in KERNEL batches
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
            if env.kind is Kind.KERNEL:
                k = len(env.body["events"])
                self.received[str(env.body.get("probe"))] += k
                n += k
            elif env.kind is Kind.STATS and env.body.get("source") == "probes":
                self.stats = env.body
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


def run_c_loop(exe: Path, port: int, count: int) -> float:
    out = subprocess.run(
        [str(exe), "client", str(port), str(count), "60"],
        capture_output=True,
        text=True,
        check=True,
        timeout=90,
    )
    return c_loop_rate(out.stdout)


def run_bomber(port: int, count: int) -> float:
    out = subprocess.run(bomber_argv(port, count), capture_output=True, text=True, timeout=120)
    return bomber_rate(out.stderr)


@dataclass
class BomberFigures:
    """What later sections need from the bomber runs."""

    c_loop: list[float] = field(default_factory=list)
    alone: list[float] = field(default_factory=list)
    with_probes: list[float] = field(default_factory=list)
    event_rates: list[float] = field(default_factory=list)  # kernel events/s at full speed
    events_per_conn: list[float] = field(default_factory=list)
    loss: Loss = field(default_factory=Loss)


def connection_rate(exe: Path, port: int, count: int, rounds: int, fig: BomberFigures) -> Row:
    """The bomber alone vs the minimal C loop, both to the C server."""
    with c_server(exe, port):
        for r in range(rounds):
            # Alternate who goes first, so a drift of the machine hits both.
            for who in ("c", "bomber") if r % 2 == 0 else ("bomber", "c"):
                if who == "c":
                    fig.c_loop.append(run_c_loop(exe, port, count))
                else:
                    fig.alone.append(run_bomber(port, count))
    return Row(
        "conn_rate",
        "Connection rate",
        "bomber vs minimal C connect()/close() loop (to a C accept server)",
        median(fig.alone),
        "conn/s",
        median(fig.c_loop),
        "C loop",
        goal=">= 0.95",
        runs={"bomber": fig.alone, "c_loop": fig.c_loop},
    )


def bomber_with_probes(server_pid: int, port: int, count: int, fig: BomberFigures) -> float:
    """One bomber run with every probe attached and streaming to a hub here."""
    sess = ProbeSession(port)
    try:
        bomber = gated(bomber_argv(port, count), stderr=subprocess.PIPE)
        # The lab's filter: the port, then the pids of its processes.
        sess.set_pids([server_pid, bomber.pid])
        sess.settle()
        before = sum(sess.received.values())
        release(bomber)
        sess.run_while([bomber])
        assert bomber.stderr is not None
        rate = bomber_rate(bomber.stderr.read().decode(errors="replace"))
        sess.settle()
        events = sum(sess.received.values()) - before
    finally:
        loss = sess.close()
        fig.loss.add(loss)
    # What the kernel produced: received plus dropped (the only load on the
    # probes' port and pids is this bomber), over the bomber's own time span.
    produced = events + loss.drops
    fig.event_rates.append(produced / (count / rate))
    fig.events_per_conn.append(produced / count)
    return rate


def probe_overhead(exe: Path, port: int, count: int, rounds: int, fig: BomberFigures) -> Row:
    """The bomber with the probes attached vs without, alternating."""
    without: list[float] = []
    with c_server(exe, port) as srv:
        for r in range(rounds):
            for attached in (False, True) if r % 2 == 0 else (True, False):
                if attached:
                    fig.with_probes.append(bomber_with_probes(srv.pid, port, count, fig))
                else:
                    without.append(run_bomber(port, count))
    return Row(
        "probe_overhead",
        "Observation overhead",
        "bomber with probes attached (python -m probes -> bus -> hub) / without",
        median(fig.with_probes),
        "conn/s",
        median(without),
        "without probes",
        goal=">= 0.95",
        note=(
            f"{median(fig.events_per_conn):.1f} kernel events per connection, "
            f"{median(fig.event_rates):,.0f} events/s"
        ),
        runs={"with": fig.with_probes, "without": without},
    )


def wait_in_namespace(ns: Any, port: int) -> None:
    code = (
        "import socket,time,sys\n"
        "for _ in range(300):\n"
        f"    if socket.socket().connect_ex(('127.0.0.1',{port}))==0: sys.exit(0)\n"
        "    time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    if ns.run([PY, "-c", code]).returncode != 0:
        raise BenchError(f"the server in {ns.name} did not listen on {port}")


def full_lab(count: int, rounds: int, fig: BomberFigures) -> tuple[Row, dict[str, Any]]:
    """The bomber under LabRun (probes, hub, recording; then correlation)
    vs the same server and bomber alone in a namespace of their own."""
    from lab.netns import LabNamespace
    from lab.run import LabRun, RunOptions
    from lab.scenario import load
    from reports import build_reports

    base = load(HERE / "lab_bomb.toml")
    actors = [
        dataclasses.replace(a, args=["--target", "127.0.0.1:8080", "--count", str(count)])
        if a.role == "bomber"
        else a
        for a in base.actors
    ]
    scenario = dataclasses.replace(base, actors=actors)
    runs_dir = OUT / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    lab_rates: list[float] = []
    alone: list[float] = []
    last_run: Path | None = None
    lab_loss = Loss()
    ns = LabNamespace("benchpeer").create()
    try:
        with py_server(8080, netns=ns.command([])):
            wait_in_namespace(ns, 8080)
            for r in range(rounds):
                for in_lab in (True, False) if r % 2 == 0 else (False, True):
                    if not in_lab:
                        out = ns.run(bomber_argv(8080, count), capture_output=True, timeout=120)
                        alone.append(bomber_rate(out.stderr))
                        continue
                    lab = LabRun(scenario, RunOptions(runs_dir=runs_dir, view="quiet"))
                    if last_run is not None:
                        shutil.rmtree(last_run, ignore_errors=True)
                    last_run = lab.execute()
                    done = lab.tally.finished.get("bomber")
                    if done is None:
                        raise BenchError(f"the lab's bomber did not finish: see {last_run}")
                    lab_rates.append(float(done["per_s"]))
                    ledger = lab.hub.events_ledger
                    lab_loss.add(
                        Loss(
                            drops=lab.tally.kernel_drops,
                            gaps=len(ledger.gaps),
                            rejected=sum(ledger.rejected.values()),
                        )
                    )
                    time.sleep(0.5)  # let the namespace go before the next run
    finally:
        ns.destroy()
    fig.loss.add(lab_loss)
    # Correlation happens after the run (reports.build_reports): it cannot
    # slow the bomber, but it is part of the lab, so it runs and is timed.
    assert last_run is not None
    t = time.perf_counter()
    summary = build_reports(last_run)
    secs = time.perf_counter() - t
    items = int(summary["outputs"]["events"])
    cov = summary.get("coverage", {})
    lost = summary.get("counts", {}).get("lost", {})
    row = Row(
        "lab_overhead",
        "Observation overhead",
        "bomber under the full lab (LabRun: probes, orchestrator, recording) / alone, "
        "same server, both in a namespace",
        median(lab_rates),
        "conn/s",
        median(alone),
        "alone in a namespace",
        goal=">= 0.90",
        note=(
            f"correlation of the last run: {items:,} events in {secs:.1f} s; "
            f"coverage app {cov.get('app_connections_pct')}%, "
            f"kernel {cov.get('kernel_events_pct')}%; losses {lost}"
        ),
        runs={"lab": lab_rates, "alone": alone},
    )
    return row, {"correlate_s": secs, "items": items, "summary_lost": lost}


# Load levels for the loss onset: (C connect loops, conn/s each; 0 = flat out).
LEVELS = [(1, 2000), (1, 4000), (1, 6000), (1, 9000), (1, 12000), (1, 0), (2, 0), (4, 0)]


def loss_onset(
    exe: Path, port: int, levels: list[tuple[int, int]], seconds: float, fig: BomberFigures
) -> tuple[Row, list[dict[str, Any]]]:
    """Raise the load (paced, then flat-out C connect loops) with the probes
    attached until the kernel or the pipeline loses events."""
    steps: list[dict[str, Any]] = []
    with c_server(exe, port) as srv:
        sess = ProbeSession(port)
        try:
            for n, rate in levels:
                argv = [str(exe), "client", str(port), "100000000", str(seconds), str(rate)]
                loops = [gated(argv, stdout=subprocess.PIPE) for _ in range(n)]
                sess.set_pids([srv.pid, *[p.pid for p in loops]])
                sess.settle()
                s0 = sess.fresh_stats().get("programs", {})
                got0 = sum(sess.received.values())
                t0 = time.monotonic()
                for p in loops:
                    release(p)
                sess.run_while(loops)
                secs = time.monotonic() - t0
                sess.settle()
                s1 = sess.fresh_stats().get("programs", {})
                received = sum(sess.received.values()) - got0
                by_probe = {k: int(s1[k]["drops"]) - int(s0.get(k, {}).get("drops", 0)) for k in s1}
                drops = sum(by_probe.values())
                conns = sum(int(p.stdout.read().split()[1]) for p in loops if p.stdout)
                step = {
                    "loops": n,
                    "paced_at": rate * n or "flat out",
                    "seconds": round(secs, 2),
                    "conn_per_s": round(conns / secs),
                    "offered_per_s": round((received + drops) / secs),
                    "received": received,
                    "drops": drops,
                    "drops_by_probe": {k: v for k, v in by_probe.items() if v},
                }
                log(f"loss onset: {step}")
                steps.append(step)
                if drops:
                    break
        finally:
            # Not added to the full-speed ledger: this section loses on purpose.
            sess.close()
    clean = [s for s in steps if not s["drops"]]
    best = max((s["offered_per_s"] for s in clean), default=0)
    first_lossy = next((s for s in steps if s["drops"]), None)
    peer = median(fig.event_rates)
    if first_lossy:
        note = (
            f"losses begin above {best:,} events/s (at {first_lossy['offered_per_s']:,}/s "
            f"with {first_lossy['loops']} C loop(s) at {first_lossy['paced_at']} conn/s: "
            f"{first_lossy['drops']:,} dropped)"
        )
    else:
        note = (
            f"no loss at any level: {best:,} events/s is the most {levels[-1][0]} C loops "
            "could offer on this machine (a lower bound for the onset)"
        )
    row = Row(
        "loss_onset",
        "Event loss",
        "highest loss-free kernel event rate (N C connect loops, probes attached) "
        "vs the full-speed bomber's event rate",
        best,
        "events/s",
        peer,
        "bomber events/s",
        goal=">= 2.0",
        note=note,
    )
    return row, steps


def loss_row(fig: BomberFigures) -> Row:
    loss = fig.loss
    return Row(
        "loss_full_speed",
        "Event loss",
        "events lost end to end at full speed (kernel ring drops + counted-not-received "
        "+ bus gaps + rejected frames), all runs with probes",
        float(loss.lost),
        "events",
        float(loss.counted or loss.received),
        "events counted",
        goal="== 0",
        goal_on="value",
        note=(
            f"drops {loss.drops}, counted {loss.counted:,}, received {loss.received:,}, "
            f"gaps {loss.gaps}, rejected {loss.rejected}; drops by probe "
            f"{dict(loss.drops_by_probe) or 0}"
        ),
    )
