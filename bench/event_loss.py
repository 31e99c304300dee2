"""Event loss: the load at which the probes start to lose events (paced,
then flat-out C connect loops to 127.0.0.1), and the losses of every run
with probes at full speed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import Row, c_server, gated, log, median, release
from bench.probe_session import ProbeSession
from bench.rates import BomberFigures

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
