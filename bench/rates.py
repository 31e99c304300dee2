"""Connection rate: the bomber alone against the minimal C connect loop, and
the bomber's runs the later sections pair against.

All connections go to 127.0.0.1 (or inside a lab namespace); every loop is
bounded by a count and a time.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError
from bench.cpu import cpu_note, cpu_row
from bench.pairs import Row, paired
from bench.probe_session import Loss
from bench.procs import bomber_argv, bomber_cpu_us, bomber_rate, c_loop_rate, c_server, reap


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
