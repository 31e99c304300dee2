"""CPU per connection: sampled from /proc, and the rows and notes that put
it beside a rate.

CPU per connection is far steadier than connections/s on a shared machine:
it is what to steer by when a rate's spread is wide.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.pairs import Row, median

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


def cpu_text(runs: list[dict[str, float]]) -> str:
    """ "41 (server 14, bomber 12, probes 9, orchestrator 6)": medians per process."""
    names = sorted({k for r in runs for k in r}, key=lambda k: -median([r.get(k, 0) for r in runs]))
    each = {k: median([r.get(k, 0.0) for r in runs]) for k in names}
    total = median([sum(r.values()) for r in runs])
    return f"{total:.0f} (" + ", ".join(f"{k} {v:.0f}" for k, v in each.items()) + ")"
