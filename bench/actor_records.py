"""What the actors' per-connection records cost, in CPU per connection.

Run: sudo .venv/bin/python -m bench.actor_records [--count 20000] [--rounds 3]
The server and the bomber run attached to a Hub in this process (the
orchestrator's end: decode and validation of every frame), no probes,
loopback only. Two arms, alternating: records on, and records dropped at
the source (bench/records_off on PYTHONPATH). CPU (user + system) per
connection of the bomber, the server and this process, medians; the
difference between the arms is what the records cost each of them. CPU time
rather than connections/s: steadier when the machine is shared.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import Any

from bench.common import PY, BenchError, log
from bench.cpu import CpuSampler
from bench.lab_overhead import records_off
from bench.pairs import median
from bus.endpoints import ipc_endpoints, make_run_dir
from bus.hub import Hub
from bus.schema import Kind


def one_run(count: int) -> dict[str, float]:
    """CPU µs per connection by process, and the LOG records received."""
    ep = ipc_endpoints(make_run_dir())
    hub = Hub(ep.events, ep.control, typed_log=True)  # as lab/run.py's
    procs: dict[str, subprocess.Popen[bytes]] = {}
    records = 0

    def spawn(role: str, *args: str) -> None:
        argv = [PY, "-m", f"actors.{role}", "--quiet", *ep.as_args(), "--name", role, *args]
        procs[role] = subprocess.Popen(argv)

    def pump_until(done: Any, limit_s: float, what: str) -> Any:
        nonlocal records
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            for _, env in hub.poll(50):
                if env.kind is Kind.LOG:
                    records += len(env.body["records"])
                if done(env):
                    return env
        raise BenchError(f"no {what} in {limit_s:g} s")

    def ready(name: str) -> Any:
        return lambda e: e.kind is Kind.READY and e.sender == name

    try:
        spawn("server", "--port", "0")
        port = pump_until(ready("server"), 30, "server ready").body["port"]
        hub.command("server", "start")
        spawn("bomber", "--target", f"127.0.0.1:{port}", "--count", str(count))
        pump_until(ready("bomber"), 30, "bomber ready")
        sampler = CpuSampler(lambda: {k: p.pid for k, p in procs.items()}, "hub")
        hub.command("bomber", "start")
        pump_until(
            lambda e: e.kind is Kind.STATS and e.sender == "server" and e.body["closed"] >= count,
            120,
            "server closing every connection",
        )
        for name in ("bomber", "server"):
            hub.send_command(name, "stop")
            pump_until(lambda e, n=name: e.kind is Kind.EOF and e.sender == n, 30, f"{name} eof")
        used = sampler.stop()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        hub.close()
    return {**{k: v * 1e6 / count for k, v in used.items()}, "records": records}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    arms: dict[str, list[dict[str, float]]] = {"records on": [], "records off": []}
    for r in range(args.rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            if on:
                arms["records on"].append(one_run(args.count))
            else:
                with records_off():
                    arms["records off"].append(one_run(args.count))
            log(f"round {r + 1}: {'on' if on else 'off'} done")
    med = {
        arm: {k: median([run[k] for run in runs]) for k in runs[0]} for arm, runs in arms.items()
    }
    for arm, m in med.items():
        each = ", ".join(f"{k} {v:.1f}" for k, v in m.items() if k != "records")
        print(f"{arm:>12}: CPU µs per connection: {each}; records {m['records']:,.0f}")
    with_rec, without = med["records on"], med["records off"]
    cost = {k: with_rec[k] - without[k] for k in ("bomber", "server", "hub")}
    per = with_rec["records"] / args.count
    print(
        "records cost per connection: "
        + ", ".join(f"{k} {v:.1f} µs" for k, v in cost.items())
        + f"; total {sum(cost.values()):.1f} µs for {per:.1f} records"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
