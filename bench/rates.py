"""Connection rate, observation overhead and event loss: the bomber's sections.

All connections go to 127.0.0.1 (or inside a lab namespace); every loop is
bounded by a count and a time.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    bomber_cpu_us,
    bomber_rate,
    c_loop_rate,
    c_server,
    gated,
    log,
    median,
    paired,
    py_server,
    reap,
    release,
    stop,
)
from bus.endpoints import ipc_endpoints, make_run_dir
from bus.rawbatch import count
from bus.schema import Kind
from bus.transport import Hub

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


def run_c_loop(exe: Path, port: int, count: int, cpu: list[float]) -> float:
    """One C loop run: its connections/s; its CPU µs per connection go to `cpu`."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([str(exe), "client", str(port), str(count), "60"], stdout=out)
        cpu.append(reap(proc, limit_s=90) * 1e6 / count)
        if proc.returncode:
            raise BenchError(f"connect_loop client exited with {proc.returncode}")
        out.seek(0)
        return c_loop_rate(out.read())


def run_bomber(port: int, count: int, cpu: list[float], netns: list[str] | None = None) -> float:
    """One bomber run alone: its connections/s; its CPU µs per connection go to `cpu`."""
    argv = [*(netns or []), *bomber_argv(port, count)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    cpu.append(bomber_cpu_us(out.stderr, count))
    return bomber_rate(out.stderr)


@dataclass
class BomberFigures:
    """What later sections need from the bomber runs."""

    c_loop: list[float] = field(default_factory=list)
    alone: list[float] = field(default_factory=list)
    # CPU µs per connection (user + system) of the client process, per run
    cpu: dict[str, list[float]] = field(default_factory=dict)
    with_probes: list[float] = field(default_factory=list)
    event_rates: list[float] = field(default_factory=list)  # kernel events/s at full speed
    events_per_conn: list[float] = field(default_factory=list)
    loss: Loss = field(default_factory=Loss)


def connection_rate(
    exe: Path, port: int, count: int, rounds: int, extra: int, fig: BomberFigures
) -> list[Row]:
    """The bomber alone vs the minimal C loop, both to the C server: rates and CPU."""
    cpu_b, cpu_c = fig.cpu.setdefault("bomber", []), fig.cpu.setdefault("c_loop", [])
    with c_server(exe, port):
        runs = paired(
            lambda: run_bomber(port, count, cpu_b),
            lambda: run_c_loop(exe, port, count, cpu_c),
            rounds,
            extra,
        )
    fig.alone += runs.value
    fig.c_loop += runs.peer
    rate = runs.row(
        "conn_rate",
        "Connection rate",
        "bomber vs minimal C connect()/close() loop (to a C accept server)",
        "conn/s",
        "C loop",
        ("bomber", "c_loop"),
        goal=">= 0.95",
        note=cpu_note("bomber", cpu_b, "C loop", cpu_c, runs.window),
    )
    cpu = cpu_row(
        "conn_rate_cpu",
        "Connection rate",
        "CPU per connection: bomber vs the C loop (the same pairs)",
        cpu_b,
        cpu_c,
        "C loop",
        runs.window,
    )
    return [rate, cpu]


def cpu_note(name: str, cpu: list[float], peer: str, peer_cpu: list[float], window: int) -> str:
    """The two arms' CPU per connection over the row's window of pairs, and
    peer / value per pair: what the rate ratio would be if CPU were all."""
    cpu, peer_cpu = cpu[-window:], peer_cpu[-window:]
    ratios = [p / c for c, p in zip(cpu, peer_cpu, strict=True) if c]
    if not ratios:
        return ""
    return (
        f"CPU per connection (user + system): {name} {median(cpu):.1f} µs, {peer} "
        f"{median(peer_cpu):.1f} µs; {peer} / {name} {median(ratios):.2f} "
        f"({min(ratios):.2f}–{max(ratios):.2f})"
    )


def cpu_row(
    key: str,
    section: str,
    measure: str,
    cpu: list[float],
    peer_cpu: list[float],
    peer_label: str,
    window: int,
) -> Row:
    """A row of CPU per connection, paired like its rate row: ratio = peer /
    value per pair, so above 1 means the value's arm costs less, as a rate
    ratio above 1 means it runs faster. No goal: it is what to steer by when
    the rate's spread is wide."""
    vs, ps = cpu[-window:], peer_cpu[-window:]
    ratios = [p / v for v, p in zip(vs, ps, strict=True) if v]
    return Row(
        key, section, measure, median(vs), "µs CPU/conn", median(ps), peer_label,
        runs={"value": cpu, "peer": peer_cpu}, ratios=ratios, pairs_run=len(cpu),
        note="user + system per connection; ratio = peer / value",
    )  # fmt: skip


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
        err = bomber.stderr.read().decode(errors="replace")
        rate = bomber_rate(err)
        fig.cpu.setdefault("with_probes", []).append(bomber_cpu_us(err, count))
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


def probe_overhead(
    exe: Path, port: int, count: int, rounds: int, extra: int, fig: BomberFigures
) -> list[Row]:
    """The bomber with the probes attached vs without, in pairs: rates and the
    bomber's own CPU (the tracepoints run in its syscalls)."""
    without_cpu = fig.cpu.setdefault("without_probes", [])
    with c_server(exe, port) as srv:
        runs = paired(lambda: bomber_with_probes(srv.pid, port, count, fig),
                      lambda: run_bomber(port, count, without_cpu), rounds, extra)  # fmt: skip
    fig.with_probes += runs.value
    rate = runs.row(
        "probe_overhead",
        "Observation overhead",
        "bomber with probes attached (python -m probes -> bus -> hub) / without",
        "conn/s",
        "without probes",
        ("with", "without"),
        goal=">= 0.95",
        note=(
            f"{median(fig.events_per_conn):.1f} kernel events per connection, "
            f"{median(fig.event_rates):,.0f} events/s; the bomber's own "
            + cpu_note("with", fig.cpu["with_probes"], "without", without_cpu, runs.window)
        ),
    )
    cpu = cpu_row(
        "probe_overhead_cpu",
        "Observation overhead",
        "the bomber's own CPU per connection with probes attached vs without (the same pairs)",
        fig.cpu["with_probes"],
        without_cpu,
        "without probes",
        runs.window,
    )
    return [rate, cpu]


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


CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.05  # the CPU a process spends after its last sample is not counted


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat; field 3 is fields[0] here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuSampler:
    """CPU seconds (user + system) of some processes, by name, sampled from
    /proc while they run, and of this process (the lab's hub) when asked.

    CPU per connection is far steadier than connections/s on a shared
    machine: it says what each part of the lab costs, whatever the
    neighbours do. Processes are sampled every SAMPLE_S until they exit;
    CPU counts from the first sample at which `start()` is true (the probes'
    BPF compilation and everyone's imports are not what a connection costs).
    """

    def __init__(
        self,
        pids: Callable[[], dict[str, int]],
        this_process: str = "",
        start: Callable[[], bool] | None = None,
    ) -> None:
        self.pids = pids
        self.this_process = this_process
        self.start = start
        self.started = False
        self.base: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._self0 = time.process_time()
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for name, pid in self.pids().items():
            used = cpu_s(pid)
            if used is not None:  # gone: its last sample stands
                self.cpu[name] = used
        if not self.started:
            self.base = dict(self.cpu)
            self._self0 = time.process_time()
            self.started = self.start is None or self.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        used = {k: v - self.base.get(k, 0.0) for k, v in self.cpu.items()}
        if self.this_process:
            used[self.this_process] = time.process_time() - self._self0
        return used


RECORDS_OFF = HERE / "records_off"  # a sitecustomize that drops the actors' per-connection records
BOMB_PHASE = "bomb"  # bench/lab_bomb.toml's phase that runs the bomber


@contextmanager
def records_off() -> Iterator[None]:
    """Python processes started inside the block drop their per-connection
    records at the source (bench/records_off/sitecustomize.py): the lab run
    minus what those records cost the actors, the bus and the orchestrator."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(RECORDS_OFF), before]))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def full_lab(
    count: int, rounds: int, extra: int, fig: BomberFigures
) -> tuple[list[Row], dict[str, Any]]:
    """The bomber under LabRun (probes, hub, recording; then correlation)
    vs the same server and bomber alone in a namespace of their own; and the
    same lab with the actors' per-connection records dropped vs alone."""
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
    kept: dict[bool, Path] = {}  # the last run directory with records, and without
    lab_loss = Loss()
    records: list[int] = []  # LOG records the hub received per lab run with records on
    # CPU microseconds per connection, by process, per run: alone, in the lab
    # with the records, without them.
    cpu: dict[str, list[dict[str, float]]] = {"alone": [], "lab": [], "lab_no_records": []}

    def in_lab(with_records: bool = True) -> float:
        lab = LabRun(scenario, RunOptions(runs_dir=runs_dir, view="quiet"))
        if with_records in kept:  # a recording is ~40 MB: keep one per arm
            shutil.rmtree(kept.pop(with_records), ignore_errors=True)

        def lab_pids() -> dict[str, int]:
            sup = getattr(lab, "sup", None)  # made by execute()
            return {n: p.pid for n, p in (sup.processes if sup else {}).items()}

        # From the bombing phase on: set-up (BPF compilation) is not per connection.
        sampler = CpuSampler(lab_pids, "orchestrator", lambda: lab.phase == BOMB_PHASE)
        try:
            if with_records:
                run_dir = lab.execute()
            else:
                with records_off():
                    run_dir = lab.execute()
        finally:
            used = sampler.stop()
        kept[with_records] = run_dir
        done = lab.tally.finished.get("bomber")
        if done is None:
            raise BenchError(f"the lab's bomber did not finish: see {run_dir}")
        arm = "lab" if with_records else "lab_no_records"
        used["bomber"] = float(done["cpu_s"])  # its own figure, start-up left out, as alone
        cpu[arm].append({k: v * 1e6 / count for k, v in used.items()})
        ledger = lab.hub.events_ledger
        lab_loss.add(
            Loss(
                drops=lab.tally.kernel_drops,
                gaps=len(ledger.gaps),
                rejected=sum(ledger.rejected.values()),
            )
        )
        if with_records:
            records.append(lab.tally.log_records)
        time.sleep(0.5)  # let the namespace go before the next run
        return float(done["per_s"])

    ns = LabNamespace("benchpeer").create()
    try:
        with py_server(8080, netns=ns.command([])) as server:
            wait_in_namespace(ns, 8080)

            def alone() -> float:
                spent: list[float] = []
                server0 = cpu_s(server.pid) or 0.0
                rate = run_bomber(8080, count, spent, netns=ns.command([]))
                server_us = ((cpu_s(server.pid) or 0.0) - server0) * 1e6 / count
                cpu["alone"].append({"bomber": spent[0], "server": server_us})
                return rate

            full = paired(in_lab, alone, rounds, extra)
            lean = paired(lambda: in_lab(with_records=False), alone, rounds, extra)
    finally:
        ns.destroy()
    fig.loss.add(lab_loss)
    # Correlation happens after the run (reports.build_reports): it cannot
    # slow the bomber, but it is part of the lab, so it runs and is timed.
    t = time.perf_counter()
    summary = build_reports(kept[True])
    secs = time.perf_counter() - t
    items = int(summary["outputs"]["events"])
    cov = summary.get("coverage", {})
    lost = summary.get("counts", {}).get("lost", {})
    with_rows = full.row(
        "lab_overhead",
        "Observation overhead",
        "bomber under the full lab (LabRun: probes, orchestrator, recording) / alone, "
        "same server, both in a namespace",
        "conn/s",
        "alone in a namespace",
        ("lab", "alone"),
        goal=">= 0.90",
        note=(
            f"correlation of the last run: {items:,} events in {secs:.1f} s; "
            f"coverage app {cov.get('app_connections_pct')}%, "
            f"kernel {cov.get('kernel_events_pct')}%; losses {lost}; "
            f"app records received per run {records}"
        ),
    )
    share = records_share(median(full.ratios), median(lean.ratios))
    alone_cpu, on, off = (cpu_text(cpu[k]) for k in ("alone", "lab", "lab_no_records"))
    without_rows = lean.row(
        "lab_records",
        "Observation overhead",
        "bomber under the full lab with the actors' per-connection records dropped at the "
        "source / alone (what the records cost: the difference to the row above)",
        "conn/s",
        "alone in a namespace",
        ("lab_no_records", "alone"),
        note=(
            f"the records' share of the lab's slowdown: {share}; CPU µs per connection "
            f"(medians): alone {alone_cpu}; lab with records {on}; without {off}"
        ),
    )
    totals = {arm: [sum(run.values()) for run in runs] for arm, runs in cpu.items()}
    cpu_rows = cpu_row(
        "lab_cpu",
        "Observation overhead",
        "CPU per connection of the whole lab (bomber, server, probes, orchestrator) "
        "vs bomber and server alone (the lab_overhead pairs)",
        totals["lab"],
        totals["alone"][: len(full.peer)],  # the first alone runs were full's peers
        "alone",
        full.window,
    )
    details = {"correlate_s": secs, "items": items, "summary_lost": lost, "cpu_us_per_conn": cpu}
    return [with_rows, without_rows, cpu_rows], details


def cpu_text(runs: list[dict[str, float]]) -> str:
    """ "41 (server 14, bomber 12, probes 9, orchestrator 6)": medians per process."""
    names = sorted({k for r in runs for k in r}, key=lambda k: -median([r.get(k, 0) for r in runs]))
    each = {k: median([r.get(k, 0.0) for r in runs]) for k in names}
    total = median([sum(r.values()) for r in runs])
    return f"{total:.0f} (" + ", ".join(f"{k} {v:.0f}" for k, v in each.items()) + ")"


def records_share(with_records: float, without: float) -> str:
    """How much of the lab's slowdown (1 - ratio) goes when the records go."""
    slowdown = 1 - with_records
    if slowdown <= 0:
        return "none (no slowdown to explain)"
    return f"{(without - with_records) / slowdown:.0%} ({1 - without:.2f} of {slowdown:.2f} remain)"


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
