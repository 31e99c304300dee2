"""What `ss`, `netstat` and `lsof` showed in the seed, sampled every 100 ms.

Counts TCP sockets by state (TIME_WAIT included: the state tracepoint never
reports it) in the network namespace the observer runs in, plus the open-fd
counts of the given pids, as STATS {"source", "states", "fds"}.

Two ways to count, same numbers:
- `proc` (default) parses /proc/net/tcp and /proc/net/tcp6: ~1 us per
  socket here, so 20000 sockets fit in a 100 ms period;
- `diag` asks sock_diag through pyroute2's DiagSocket (what `ss` uses):
  ~30 us per socket here, because pyroute2 decodes every attribute; fine
  for a few thousand sockets, too slow for C10k at 10 samples/s.

    python -m actors.observer --pids 1234,5678
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections import Counter
from typing import Any

from actors import runtime
from actors.runtime import Runtime, UsageError
from bus.records import TCP_STATES

# The states a socket table can show (tcp_states.h 1..11).
STATES = TCP_STATES[1:12]


def count_proc() -> dict[str, int]:
    counts: Counter[int] = Counter()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, "rb") as f:
                f.readline()  # the header
                for line in f:
                    counts[int(line.split(None, 4)[3], 16)] += 1
        except FileNotFoundError:
            continue  # no IPv6 in this kernel or namespace
    return {name: counts[i + 1] for i, name in enumerate(STATES)}


class DiagCounter:
    """sock_diag through pyroute2, one netlink socket kept open."""

    def __init__(self) -> None:
        from pyroute2 import DiagSocket

        self.ds = DiagSocket()
        self.ds.bind()

    def __call__(self) -> dict[str, int]:
        counts: Counter[int] = Counter()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self.ds.get_sock_stats(family=family):
                counts[msg["idiag_state"]] += 1
        return {name: counts[i + 1] for i, name in enumerate(STATES)}

    def close(self) -> None:
        self.ds.close()


def fd_counts(pids: list[int]) -> dict[int, int]:
    """Open fds per pid; a pid that has exited is left out."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            out[pid] = len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def parse_pids(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--pids {text!r}: give process ids separated by commas") from None


class Observer:
    def __init__(self, rt: Runtime, pids: list[int], method: str, interval: float) -> None:
        self.rt = rt
        self.pids = pids
        self.interval = interval
        self.diag = DiagCounter() if method == "diag" else None
        self.samples = 0

    def set(self, args: dict[str, Any]) -> dict[str, Any]:
        if "pids" in args:
            pids = args["pids"]
            if not isinstance(pids, list) or not all(isinstance(p, int) for p in pids):
                raise UsageError("set pids: give a list of process ids")
            self.pids = pids
        return {"pids": self.pids}

    def sample(self) -> dict[str, Any]:
        t0 = time.monotonic_ns()
        states = self.diag() if self.diag is not None else count_proc()
        fds = fd_counts(self.pids)
        self.samples += 1
        return {
            "states": states,
            "fds": fds,
            "sample_ns": t0,
            "took_us": (time.monotonic_ns() - t0) // 1000,
        }

    def run(self, duration: float | None) -> None:
        rt = self.rt
        end = time.monotonic() + duration if duration else None
        next_at = time.monotonic()
        while rt.running and (end is None or time.monotonic() < end):
            body = self.sample()
            if rt.events is not None:
                rt.events.stats(body)
            else:
                busy = {k: v for k, v in body["states"].items() if v}
                rt.log.info("sample", states=busy, fds=body["fds"])
            next_at += self.interval
            # A slow sample delays the next one rather than piling up.
            next_at = max(next_at, time.monotonic())
            # Commands and heartbeats between every two samples, also when a
            # sample took longer than the interval (a loaded machine, a large
            # socket table): else `stop` would never be served.
            rt.service(0)
            while rt.running and time.monotonic() < next_at:
                rt.service(max(1, int((next_at - time.monotonic()) * 1000)))

    def close(self) -> None:
        if self.diag is not None:
            self.diag.close()


def observe(args: argparse.Namespace) -> int:
    pids = parse_pids(args.pids)
    if args.interval <= 0:
        raise UsageError("--interval must be > 0 seconds")
    rt = Runtime("observer", args)
    obs = Observer(rt, pids, args.method, args.interval)
    rt.on_set = obs.set
    rt.progress = lambda: {"samples": obs.samples}
    rt.ready(method=args.method, interval=args.interval)
    if rt.wait_start():
        obs.run(args.duration)
    obs.close()
    return rt.close()


def main(argv: list[str] | None = None) -> int:
    p = runtime.parser("observer", "TCP state counts and open fds, every 100 ms.")
    p.add_argument("--pids", default="", help="pids whose open fds to count, e.g. 12,34")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    p.add_argument("--method", choices=["proc", "diag"], default="proc", help="how to count")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = p.parse_args(argv)
    return runtime.run(lambda: observe(args), "observer")


if __name__ == "__main__":
    raise SystemExit(main())
