"""Observation overhead of the whole lab: the bomber under LabRun (probes,
orchestrator, recording, then correlation) vs the same server and bomber
alone in a namespace of their own; and the lab with the actors'
per-connection records dropped at the source.

All connections stay inside the lab's namespaces (127.0.0.1 there).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import HERE, OUT, PY, BenchError
from bench.cpu import CpuSampler, cpu_row, cpu_s, cpu_text
from bench.pairs import Row, median, paired
from bench.probe_session import Loss
from bench.procs import py_server
from bench.rates import BomberFigures, run_bomber


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


def records_share(with_records: float, without: float) -> str:
    """How much of the lab's slowdown (1 - ratio) goes when the records go."""
    slowdown = 1 - with_records
    if slowdown <= 0:
        return "none (no slowdown to explain)"
    return f"{(without - with_records) / slowdown:.0%} ({1 - without:.2f} of {slowdown:.2f} remain)"
