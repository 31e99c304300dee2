"""Event loss: the load at which the probes start to lose events (paced,
then flat-out C connect loops to 127.0.0.1), and the losses of every run
with probes at full speed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import log
from bench.cpu import cpu_s
from bench.pairs import Row, median
from bench.probe_session import ProbeSession
from bench.procs import c_server, gated, release
from bench.rates import BomberFigures

# Load levels for the loss onset: (C connect loops, conn/s each; 0 = flat out).
LEVELS = [(1, 2000), (1, 4000), (1, 6000), (1, 9000), (1, 12000), (1, 0), (2, 0), (4, 0)]


def loss_onset(
    exe: Path, port: int, levels: list[tuple[int, int]], seconds: float, fig: BomberFigures
) -> tuple[Row, list[dict[str, Any]]]:
    """Raise the load (paced, then flat-out C connect loops) with the probes
    attached until the kernel or the pipeline loses events; each level says
    what could have limited it: the reader's CPU (python -m probes), how
    full the rings got, and the submissions the kernel refused and emit()
    retried in (probes/common.bpf.c)."""
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
                sess.take_peaks()
                cpu0 = cpu_s(sess.proc.pid)
                t0 = time.monotonic()
                for p in loops:
                    release(p)
                sess.run_while(loops)
                secs = time.monotonic() - t0
                cpu1 = cpu_s(sess.proc.pid)
                sess.settle()
                s1 = sess.fresh_stats().get("programs", {})
                received = sum(sess.received.values()) - got0
                by_probe = _grew(s0, s1, "drops")
                drops = sum(by_probe.values())
                conns = sum(int(p.stdout.read().split()[1]) for p in loops if p.stdout)
                peaks = sess.take_peaks()
                step = {
                    "loops": n,
                    "paced_at": rate * n or "flat out",
                    "seconds": round(secs, 2),
                    "conn_per_s": round(conns / secs),
                    "offered_per_s": round((received + drops) / secs),
                    "received": received,
                    "drops": drops,
                    "drops_by_probe": {k: v for k, v in by_probe.items() if v},
                    "retried": sum(_grew(s0, s1, "retries").values()),
                    # Share of a core the probe process used while the load ran.
                    "reader_core": (
                        round((cpu1 - cpu0) / secs, 3) if cpu0 is not None and cpu1 else None
                    ),
                    "ring_peak": {k: peaks[k] for k in s1},
                    "ring_size": {k: int(s1[k].get("ring_size", 0)) for k in s1},
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
    top = max(steps, key=lambda s: s["offered_per_s"]) if steps else None
    limits = _limits(top) if top else ""
    met_by = ""
    if first_lossy:
        note = (
            f"losses begin above {best:,} events/s (at {first_lossy['offered_per_s']:,}/s "
            f"with {first_lossy['loops']} C loop(s) at {first_lossy['paced_at']} conn/s: "
            f"{first_lossy['drops']:,} dropped; {_cause(first_lossy)})"
        )
    else:
        met_by = f"no loss at the most this machine generated ({best:,} events/s)"
        flat = [s for s in steps if not isinstance(s["paced_at"], int)]
        tried = ", ".join(f"{s['loops']} loop(s) {s['offered_per_s']:,}/s" for s in flat)
        note = (
            f"{met_by}: the load this machine can generate is the limit, not the probes "
            f"(flat-out C loops: {tried}); at the top level {limits}"
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
        met_by=met_by,
    )
    return row, steps


def _grew(before: dict[str, Any], after: dict[str, Any], key: str) -> dict[str, int]:
    """A counter of the probes' STATS, per program, between two readings."""
    return {k: int(after[k].get(key, 0)) - int(before.get(k, {}).get(key, 0)) for k in after}


def _limits(step: dict[str, Any]) -> str:
    """What could have limited a level, in words."""
    core = step["reader_core"]
    reader = "?" if core is None else f"{core:.0%} of a core"
    peak, size = step["ring_peak"].get("tcp_state", 0), step["ring_size"].get("tcp_state", 0)
    return (
        f"the reader used {reader}, the tcp_state ring peaked at {peak / 2**20:.1f} of "
        f"{size / 2**20:.0f} MiB, {step['retried']} refused submissions were retried in"
    )


def _cause(step: dict[str, Any]) -> str:
    """Why a level lost events: a ring that filled (the reader fell behind),
    or the kernel refusing a submission with space left even after emit()'s
    retries (the 6.15+ ring lock, docs/probes.md)."""
    full = [
        k
        for k in step["drops_by_probe"]
        if step["ring_size"].get(k) and step["ring_peak"].get(k, 0) >= step["ring_size"][k] // 2
    ]
    if full:
        return f"the ring of {', '.join(full)} filled: the reader fell behind; {_limits(step)}"
    return f"refused with space in the ring, after emit()'s retries; {_limits(step)}"


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
