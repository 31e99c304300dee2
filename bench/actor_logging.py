"""Cost per log record on the way to the bus: structlog chain vs SocketLog
(a dict per record) vs SocketLog.conn (typed, positional: no dict).

Run: .venv/bin/python bench/actor_logging.py
A child process drains the events socket (a real Hub), so the figures
include msgpack batching and ZeroMQ ipc. Prints the CPU time of this
process per record (steadier than wall time on a shared machine), medians
of 5.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

import structlog

from bus import logging as buslog
from bus.endpoints import ipc_endpoints, make_run_dir
from bus.transport import ControlClient, EventSender

N = 50_000
ROUNDS = 5
DRAIN = """
import sys, time
from bus.hub import Hub
hub = Hub(sys.argv[1], sys.argv[2])
end = time.monotonic() + 120
while time.monotonic() < end:
    if any(e.kind == "eof" for _, e in hub.poll(200)):
        break
hub.close()
"""


def per_record_ns(emit: object, sender: EventSender) -> float:
    fn = emit  # a callable(i)
    t0 = time.process_time_ns()
    for i in range(N):
        fn(i)  # type: ignore[operator]
    sender.flush()
    return (time.process_time_ns() - t0) / N


def main() -> int:
    ep = ipc_endpoints(make_run_dir())
    drain = subprocess.Popen([sys.executable, "-c", DRAIN, ep.events, ep.control])
    control = ControlClient(ep.control, "bench")
    sender = EventSender(ep.events, "bench", session=control.hello("bench"))
    buslog.configure("bench", sender, stderr=False, level="info")
    log = structlog.get_logger()
    lean = buslog.SocketLog("bench", sender)
    fields: dict[str, Any] = {
        "fd": 7,
        "laddr": "127.0.0.1",
        "lport": 40000,
        "raddr": "127.0.0.1",
        "rport": 8080,
    }

    def chain(i: int) -> None:
        log.info("connect", **fields)

    def fast(i: int) -> None:
        lean("connect", **fields)

    def typed(i: int) -> None:
        lean.conn("connect", 7, "127.0.0.1", 40000, "127.0.0.1", 8080)

    def filtered(i: int) -> None:
        log.debug("connect", **fields)

    results: dict[str, list[float]] = {
        "structlog": [],
        "SocketLog": [],
        "conn": [],
        "filtered": [],
    }
    for _ in range(ROUNDS):  # alternate so drift hits all alike
        results["structlog"].append(per_record_ns(chain, sender))
        results["SocketLog"].append(per_record_ns(fast, sender))
        results["conn"].append(per_record_ns(typed, sender))
        results["filtered"].append(per_record_ns(filtered, sender))
    sender.eof()
    sender.close()
    control.close()
    drain.wait(timeout=60)
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:>10}: {v / 1000:6.2f} us/record")
    print(f"structlog / SocketLog = {med['structlog'] / med['SocketLog']:.2f}")
    print(f"SocketLog / conn = {med['SocketLog'] / med['conn']:.2f}")
    # At 18k connections/s with two records each, the share of a core spent logging:
    for k in ("structlog", "SocketLog", "conn"):
        print(f"{k:>10}: {2 * 18_000 * med[k] / 1e9 * 100:.1f}% of a core at 18k conn/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
