"""STATS bodies: the observer's samples, the probes' counters, actors' progress."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from correlator.phases import Phases
from correlator.stats import Series


def numeric_tree(body: dict[Any, Any]) -> dict[str, Any]:
    """The numeric leaves of a STATS body, nesting kept, booleans as 0/1.

    Counts are what expectations compare; strings and lists are not, and a
    NaN or infinity would make summary.json invalid JSON.
    """
    out: dict[str, Any] = {}
    for k, v in body.items():
        if isinstance(v, bool):
            out[str(k)] = int(v)
        elif isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)):
            out[str(k)] = v
        elif isinstance(v, dict):
            out[str(k)] = numeric_tree(v)
    return out


@dataclass
class Samples:
    phases: Phases
    series_cap: int = 2000
    observer: Series = field(init=False)
    fds: Series = field(init=False)
    probe_programs: dict[str, dict[str, int]] = field(default_factory=dict)
    # pid -> the epoll probe's in-kernel log2 histogram of ready counts
    # (running totals); the only epoll data when per-call events are off.
    epoll_kernel_hist: dict[int, list[int]] = field(default_factory=dict)
    # Each actor's last progress report (its STATS body's numeric leaves).
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    _progress_ts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.observer = Series(self.series_cap)
        self.fds = Series(self.series_cap)

    def stats(self, body: dict[str, Any], sent_ns: int) -> None:
        # Recognised by shape, not by source name: `source` defaults to the
        # sender's name, which a scenario may choose freely.
        ts = sent_ns
        for key in ("sample_ns", "mono_ns"):
            if isinstance(body.get(key), int):
                ts = body[key]
                break
        states = body.get("states")
        programs = body.get("programs")
        if isinstance(states, dict):
            vals = {str(k): int(v) for k, v in states.items() if isinstance(v, int)}
            self.observer.add(ts, vals)
            for name, v in vals.items():
                self.phases.peak(ts, f"states_peak.{name}", v)
            fds = body.get("fds")
            if isinstance(fds, dict):
                self.fds.add(ts, {str(k): int(v) for k, v in fds.items() if isinstance(v, int)})
        elif isinstance(programs, dict):
            for name, p in programs.items():
                if isinstance(p, dict):
                    # Counters are running totals: the latest sample is the total.
                    cur = self.probe_programs.setdefault(str(name), {"events": 0, "drops": 0})
                    # misses: runs the kernel skipped (probes/progstats.py),
                    # in recordings from when the probes reported them.
                    for k in ("events", "drops", "misses"):
                        if isinstance(p.get(k), int):
                            cur[k] = max(cur.get(k, 0), p[k])
            for h in body.get("epoll_hist") or []:
                if isinstance(h, dict) and isinstance(h.get("pid"), int):
                    ready = h.get("ready_log2")
                    if isinstance(ready, list):
                        self.epoll_kernel_hist[h["pid"]] = [int(x) for x in ready]
        else:
            self._progress(str(body["source"]), ts, body)

    def _progress(self, actor: str, ts: int, body: dict[str, Any]) -> None:
        # Senders deliver their own reports in order, but be safe against a
        # late batch: the newest report by time wins.
        if ts < self._progress_ts.get(actor, ts):
            return
        tree = numeric_tree(body)
        self.progress[actor] = tree
        self._progress_ts[actor] = ts
        self.phases.note_progress(actor, ts, tree)
