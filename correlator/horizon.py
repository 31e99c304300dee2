"""How far a run's figures reach: the whole run, or only up to where the
kernel view ended (the probe process died) or the recording was cut short;
and which expectations that leaves unknown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from correlator.recording import RecordingStats
from correlator.result import Result

# The roots of summary["counts"] that come from the probes (the kernel view);
# the others come from the actors (logs, their own counters, the observer).
KERNEL_COUNTS = frozenset(
    {
        "connections",
        "listeners",
        "outcomes",
        "kernel_errors",
        "accept",
        "epoll",
        "epoll_by_actor",
        "kernel_events",
        "max_live_sockets",
        "coverage",
        "lost",
    }
)


@dataclass
class Horizon:
    """How far the figures reach, in seconds from the run's start: the whole
    run, or up to where the kernel view ended (the probe process died) or
    where the recording was cut short."""

    run_s: float
    kernel_ended_s: float | None = None
    kernel_why: str | None = None
    recording_ends_s: float | None = None
    recording_why: str | None = None

    @property
    def complete(self) -> bool:
        return self.kernel_ended_s is None and self.recording_ends_s is None

    def kernel_until(self) -> tuple[float, str] | None:
        """Where kernel data ends, and what ended: None if it covers the run."""
        ends = []
        if self.kernel_ended_s is not None:
            ends.append((self.kernel_ended_s, "the kernel view ended"))
        if self.recording_ends_s is not None:
            ends.append((self.recording_ends_s, "the recording ends"))
        return min(ends) if ends else None

    def judge(self, path: str, phase_end_s: dict[str, float]) -> str | None:
        """Why the count at `path` cannot be judged, or None when it can: its
        data reaches past where the kernel view or the recording ends."""
        parts = path.split(".")
        if parts[0] == "phases" and len(parts) > 2:
            end, root = phase_end_s.get(parts[1], self.run_s), parts[2]
        else:
            end, root = self.run_s, parts[0]
        if self.recording_ends_s is not None and end > self.recording_ends_s:
            return f"the recording ends at {self.recording_ends_s:g} s"
        if root in KERNEL_COUNTS and self.kernel_ended_s is not None and end > self.kernel_ended_s:
            return f"the kernel view ended at {self.kernel_ended_s:g} s"
        return None


def horizon(
    c: Result, rec: RecordingStats, meta: dict[str, Any], t0: int, duration_s: float
) -> Horizon:
    def at(ns: int) -> float:
        return round(max(ns - t0, 0) / 1e9, 3)

    h = Horizon(run_s=round(duration_s, 3))
    for info in (meta.get("actors") or {}).values():
        if isinstance(info, dict) and info.get("role") == "probes" and info.get("crashed"):
            ended = info.get("ended_mono_ns")
            h.kernel_ended_s = at(ended) if isinstance(ended, int) else at(c.last_ns)
            h.kernel_why = f"the probe process crashed (exit code {info.get('exit_code')})"
    # run.json says how many bytes the orchestrator wrote: a shorter file lost
    # its end, even when it was cut between two frames.
    written = (meta.get("recording") or {}).get("bytes")
    missing = written - rec.bytes if isinstance(written, int) and rec.bytes < written else 0
    if rec.truncated_tail or missing:
        h.recording_ends_s = at(rec.last_mono_ns) if rec.last_mono_ns is not None else 0.0
        h.recording_why = (
            f"{missing} of its {written} bytes are missing at the end"
            if missing
            else "its last frame is cut off"
        )
    return h


def phase_end_s(meta: dict[str, Any], c: Result) -> dict[str, float]:
    """Each phase's end in seconds from the run's start (run.json's phases)."""
    t0 = c.t0 or (c.first_ns or 0)
    out = {}
    for p in meta.get("phases") or []:
        if isinstance(p, dict) and isinstance(p.get("end_mono_ns"), int):
            out[str(p.get("name"))] = round((p["end_mono_ns"] - t0) / 1e9, 3)
    return out
