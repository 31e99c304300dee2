"""The seed's port bomb: short-lived connections as fast as possible.

Each connection is connect() then close() by the bomber, so every local
port it used sits in TIME_WAIT for 60 s. With tcp_tw_reuse=0 and a narrow
ip_local_port_range (the lab namespace sets both) connect() soon fails with
EADDRNOTAVAIL: ephemeral port exhaustion. `--pool N` is the seed's fix:
N established connections reused for every request, so no port is burnt.

Only loopback and the lab namespace's own addresses are allowed as
targets: a port bomb anywhere else is an attack.

    python -m actors.bomber --target 127.0.0.1:8080 --count 20000
    python -m actors.bomber --target 127.0.0.1:8080 --pool 8 --duration 5
"""

from __future__ import annotations

import argparse
import errno
import socket
import time
from collections import Counter
from typing import Any

from actors import runtime
from actors.runtime import Runtime, UsageError, error_fields, parse_hostport, sock_fields
from actors.targets import check_target

# Failure records per errno per second; the rest are only counted (STATS
# carries every one). Exhausted connect() fails in microseconds: logging
# each would flood the bus with identical records.
FAILURE_RECORDS_PER_S = 100
SERVICE_EVERY = 64  # loop turns between bus services: ~3 ms at full speed


class Bomber:
    def __init__(self, rt: Runtime, target: tuple[str, int], args: argparse.Namespace) -> None:
        self.rt = rt
        self.target = target
        self.family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.rate: float = args.rate
        self.count: int | None = args.count
        self.duration: float | None = args.duration
        self.pool_size: int = args.pool
        self.attempts = 0
        self.connected = 0
        self.requests = 0
        self.failed: Counter[str] = Counter()
        self._logged: Counter[str] = Counter()
        self._log_window = 0
        self._last_report = (time.monotonic(), 0)

    def progress(self) -> dict[str, Any]:
        now, done = time.monotonic(), self.connected + self.requests
        t0, done0 = self._last_report
        self._last_report = (now, done)
        return {
            "attempts": self.attempts,
            "connected": self.connected,
            "requests": self.requests,
            "failed": dict(self.failed),
            "per_s": round((done - done0) / max(now - t0, 1e-9), 1),
            "pool": self.pool_size,
        }

    def set(self, args: dict[str, Any]) -> dict[str, Any]:
        if "rate" in args:
            if not isinstance(args["rate"], int | float) or args["rate"] < 0:
                raise UsageError("set rate: give connections per second >= 0 (0 = max)")
            self.rate = float(args["rate"])
        if "count" in args:
            if not isinstance(args["count"], int) or args["count"] < 0:
                raise UsageError("set count: give a non-negative integer")
            self.count = args["count"]
        return {"rate": self.rate, "count": self.count}

    def _budget_left(self, deadline: float | None) -> bool:
        if self.count is not None and self.attempts >= self.count:
            return False
        return deadline is None or time.monotonic() < deadline

    def _fail(self, sock: socket.socket, e: OSError) -> None:
        fields = error_fields(e)
        name = fields["error"]
        self.failed[name] += 1
        window = int(time.monotonic())
        if window != self._log_window:
            self._log_window = window
            self._logged.clear()
        if self._logged[name] < FAILURE_RECORDS_PER_S:
            self._logged[name] += 1
            self.rt.sock_log("connect_failed", "warning", fd=sock.fileno(), **fields)

    def bomb(self) -> None:
        """connect() + close() until the count, duration or a stop."""
        rt, conn, target, family = self.rt, self.rt.sock_log.conn, self.target, self.family
        raddr, rport = target
        deadline = time.monotonic() + self.duration if self.duration else None
        next_at = time.monotonic()
        while rt.running and self._budget_left(deadline):
            if self.rate:
                wait = next_at - time.monotonic()
                if wait > 0.001:
                    rt.service(int(wait * 1000))
                    continue  # re-check the stop flag and budget after sleeping
                # Never bank time: after a stall, do not burst to catch up.
                next_at = max(next_at, time.monotonic() - 0.01) + 1.0 / self.rate
            self.attempts += 1
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(target)
            except OSError as e:
                self._fail(sock, e)
                sock.close()
            else:
                self.connected += 1
                # getsockname only: the remote end is the target we dialled.
                laddr, lport = sock.getsockname()[:2]
                fd = sock.fileno()
                conn("connect", fd, laddr, lport, raddr, rport)
                sock.close()
                conn("close", fd, laddr, lport, raddr, rport)
            if self.attempts % SERVICE_EVERY == 0:
                rt.service(0)

    def open_pool(self) -> None:
        """Open the N pooled connections, before `start`: a pool is set up
        once, so it keeps working while one-shot connects run out of ports."""
        self.pool: list[tuple[socket.socket, Any]] = []
        for _ in range(self.pool_size):
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            self.attempts += 1
            try:
                sock.connect(self.target)
            except OSError as e:
                self._fail(sock, e)
                sock.close()
                continue
            self.connected += 1
            self.rt.sock_log("connect", **sock_fields(sock))
            self.pool.append((sock, sock.makefile("rb")))

    def pooled(self) -> None:
        """Send each request on one of the pooled connections."""
        rt, pool = self.rt, self.pool
        if not pool:
            return
        rt.log.info("pool_ready", size=len(pool))
        deadline = time.monotonic() + self.duration if self.duration else None
        line = b"ping\n"
        i = 0
        while rt.running and self._budget_left(deadline):
            sock, reader = pool[i % len(pool)]
            i += 1
            self.attempts += 1
            try:
                sock.sendall(line)
                if not reader.readline():
                    raise ConnectionResetError(errno.ECONNRESET, "server closed the connection")
            except OSError as e:
                self._fail(sock, e)
                break
            self.requests += 1
            if i % SERVICE_EVERY == 0:
                rt.service(0)
        for sock, reader in pool:
            fields = sock_fields(sock)
            reader.close()
            sock.close()
            rt.sock_log("close", **fields)


def bomb(args: argparse.Namespace) -> int:
    target = parse_hostport(args.target)
    check_target(target[0], "bomb")
    if args.pool < 0 or args.rate < 0 or (args.count is not None and args.count < 0):
        raise UsageError("--pool, --rate and --count must be 0 or more")
    rt = Runtime("bomber", args)
    if args.verbose:
        rt.sock_log.echo = True
    bomber = Bomber(rt, target, args)
    rt.progress = bomber.progress
    rt.on_set = bomber.set
    if args.pool:
        bomber.open_pool()
    rt.ready(target=f"{target[0]}:{target[1]}", pool=args.pool)
    if rt.wait_start():
        started, cpu0 = time.monotonic(), time.process_time()
        if args.pool:
            bomber.pooled()
        else:
            bomber.bomb()
        elapsed = time.monotonic() - started
        summary = bomber.progress()
        done = bomber.connected + bomber.requests
        summary["per_s"] = round(done / max(elapsed, 1e-9), 1)
        # What the bombing cost this process (user + system, its bus thread
        # included), start-up left out: connections/s depends on the
        # neighbours, CPU per connection much less.
        summary["cpu_s"] = round(time.process_time() - cpu0, 4)
        # The orchestrator ends a phase early on `done` (until_done).
        summary["done"] = True
        rt.log.info("done", **summary)
        rt.report(summary)
        while rt.attached and not rt.stopping:
            rt.service(100)
    return rt.close()


def main(argv: list[str] | None = None) -> int:
    p = runtime.parser("bomber", "Port bomb: short-lived connections (loopback/lab only).")
    p.add_argument("--target", default="127.0.0.1:8080", help="server HOST:PORT (loopback)")
    p.add_argument("--rate", type=float, default=0, help="connections/s (0 = as fast as possible)")
    p.add_argument("--count", type=int, default=None, help="stop after this many attempts")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--pool", type=int, default=0, help="reuse N established connections")
    p.add_argument("--verbose", action="store_true", help="print every connection on stderr")
    args = p.parse_args(argv)
    return runtime.run(lambda: bomb(args), "bomber")


if __name__ == "__main__":
    raise SystemExit(main())
