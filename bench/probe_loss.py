"""Do the probes keep up with a bomber, and what do they cost it?

    sudo .venv/bin/python bench/probe_loss.py [--seconds 3] [--pairs 5]

1. Loss: a bomber-like connect/close loop, paced at rising rates and then
   unpaced, against a loopback accept-and-close server while all three probes are attached and
   drained by this process (tcp_state filtered to the server's port). For
   each load: connections/s, tcp_state events/s, events expected (10 per
   connection), received, drops counted in the kernel, and this process's
   CPU time per event received (reading the raw records, plus batching and
   msgpack with --pack: what `python -m probes` spends per event before
   ZeroMQ).
2. Overhead: the single bomber's rate with the probes attached divided by
   its rate without, runs alternating side by side, medians.

Prints ratios and counts; never a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bus.rawbatch import make_body
from bus.schema import Envelope, Kind, encode
from probes import program
from probes.loader import Filters, ProbeSet
from probes.plan import make_plan
from probes.process import BATCH_MAX

SERVER = r"""
import socket, sys
srv = socket.create_server(("127.0.0.1", 0), backlog=4096)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    c.close()
"""

# rate 0 = as fast as it goes; else paced in steps of 1 ms.
BOMBER = r"""
import socket, sys, time
port, seconds, rate = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
sys.stdin.readline()  # start together
n, start = 0, time.monotonic()
end = start + seconds
while (now := time.monotonic()) < end:
    if rate and n >= (now - start) * rate:
        time.sleep(0.001)
        continue
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    s.close()
    n += 1
print(n, flush=True)
"""

EVENTS_PER_CONNECTION = 10  # client 5 + server child 5 (see docs/probes.md)


def _normal_priority() -> None:
    # Workloads run at nice 0 even when the reader (this process) does not.
    os.setpriority(os.PRIO_PROCESS, 0, 0)


def start_server() -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_normal_priority,
    )
    assert p.stdout is not None
    return p, int(p.stdout.readline())


def bomb(port: int, seconds: float, procs: int, probes: ProbeSet | None, rate: float = 0) -> int:
    """Run `procs` bombers for `seconds`, draining the probes meanwhile; connections made."""
    bombers = [
        subprocess.Popen(
            [sys.executable, "-c", BOMBER, str(port), str(seconds), str(rate)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_normal_priority,
        )
        for _ in range(procs)
    ]
    for b in bombers:
        assert b.stdin is not None
        b.stdin.write("go\n")
        b.stdin.flush()
    while any(b.poll() is None for b in bombers):
        if probes is not None:
            probes.poll(0.02)
        else:
            time.sleep(0.02)
    return sum(int(b.communicate()[0]) for b in bombers)


def _counter(received: Counter[str], pack: bool, probes: ProbeSet) -> Callable[[str, bytes], None]:
    def count(name: str, records: bytes) -> None:
        layout = probes.layout(name)
        size = layout["itemsize"]
        received[name] += len(records) // size
        if pack:
            # The probe process's work, KERNEL_RAW batches of BATCH_MAX
            # records (probes/process.py Batcher), without the ZeroMQ send.
            full = BATCH_MAX * size
            for i in range(0, len(records), full):
                body = make_body(name, layout, records[i : i + full])
                encode(Envelope(Kind.KERNEL_RAW, "probes", 0, 0, body))

    return count


def loss(port: int, seconds: float, rates: list[float], pack: bool) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        received: Counter[str] = Counter()
        probes = ProbeSet(make_plan(), filters=Filters(ports={port}))
        probes.start(_counter(received, pack, probes))
        t0, cpu0 = time.monotonic(), time.process_time()
        conns = bomb(port, seconds, 1, probes, rate)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 5
        # Closes of the last connections may still be in flight: wait for them.
        while received["tcp_state"] < conns * EVENTS_PER_CONNECTION:
            if time.monotonic() > deadline:
                break
            probes.poll(0.05)
        cpu = time.process_time() - cpu0
        stats = probes.stats()["programs"]
        probes.close()
        rows.append(
            {
                "target": rate or "max",
                "conn_per_s": conns / elapsed,
                "state_events_per_s": received["tcp_state"] / elapsed,
                "expected": conns * EVENTS_PER_CONNECTION,
                "received": received["tcp_state"],
                "submitted": stats["tcp_state"]["events"],
                "drops": {n: s["drops"] for n, s in stats.items()},
                "retries": {n: s.get("retries", 0) for n, s in stats.items()},
                "ring_peak": stats["tcp_state"]["ring_peak"],
                "other_events": received["accept"] + received["epoll"],
                "cpu_us_per_event": cpu / max(1, sum(received.values())) * 1e6,
            }
        )
    return rows


def overhead(port: int, seconds: float, pairs: int) -> tuple[list[float], list[float]]:
    without, with_probes = [], []
    for _ in range(pairs):
        without.append(bomb(port, seconds, 1, None) / seconds)
        probes = ProbeSet(make_plan(), filters=Filters(ports={port}))
        probes.start(lambda _n, _e: None)
        with_probes.append(bomb(port, seconds, 1, probes) / seconds)
        probes.close()
    return without, with_probes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[2000, 4000, 6000, 8000, 10000, 12000, 0],
        help="connections/s to try, 0 = unpaced",
    )
    ap.add_argument("--reader-nice", type=int, default=0, help="nice value of the reader")
    ap.add_argument("--pack", action="store_true", help="also msgpack the events, as the process")
    ap.add_argument("--ring-pages", type=int, help="tcp_state ring size in pages (power of 2)")
    ap.add_argument("--no-overhead", action="store_true", help="skip the overhead pairs")
    args = ap.parse_args()
    if args.ring_pages:
        program.RING_PAGES["tcp_state"] = args.ring_pages
    os.setpriority(os.PRIO_PROCESS, 0, args.reader_nice)
    server, port = start_server()
    try:
        print(f"plan: {make_plan().describe()}")
        print("loss (all three probes attached, tcp_state filtered to the server port):")
        for r in loss(port, args.seconds, args.rates, args.pack):
            print(
                f"  target={r['target']} {r['conn_per_s']:8.0f} conn/s "
                f"{r['state_events_per_s']:8.0f} state events/s  expected={r['expected']} "
                f"received={r['received']} submitted={r['submitted']} drops={r['drops']} "
                f"retries={r['retries']} "
                f"ring_peak={r['ring_peak']}B accept+epoll events={r['other_events']} "
                f"reader_cpu={r['cpu_us_per_event']:.2f}us/event"
            )
        if args.no_overhead:
            return 0
        without, with_probes = overhead(port, args.seconds, args.pairs)
        ratio = statistics.median(with_probes) / statistics.median(without)
        print(f"bomber conn/s without probes: {[round(x) for x in without]}")
        print(f"bomber conn/s with probes:    {[round(x) for x in with_probes]}")
        print(f"with/without (medians): {ratio:.3f}  (goal >= 0.95)")
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
