"""Multiplexing scaled to C10k: N connections, one epoll loop.

One thread holds every connection; each sends a line every `--interval`
seconds (spread evenly over the interval) and reads the echoes. Reports
connections held, echoes per second, RSS and threads once a second.

A process may hold at most 20000 open files here (the hard limit), so
beyond `--per-process` connections (at most the hard limit less a reserve)
the rest go to worker processes (run alone, reporting their counters to
this one on a pipe).

    python -m actors.multiplexer --target 127.0.0.1:8080 --connections 10000
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from typing import IO, Any

from actors import runtime
from actors.runtime import Runtime, UsageError, error_fields, parse_hostport, raise_nofile
from actors.targets import check_target

PER_PROCESS = 19000  # leaves room under the 20000 hard limit for the bus, epoll, stdio
# Open files a process needs besides its connections (ZeroMQ, epoll, stdio, pipes).
FD_RESERVE = 200
IN_FLIGHT = 512  # connects waiting for the handshake at once: stays under the server backlog
TICK_S = 0.01
LINE = b"tick\n"


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


class Multiplexer:
    def __init__(self, rt: Runtime, target: tuple[str, int], n: int, interval: float) -> None:
        self.rt = rt
        self.target = target
        self.family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.want = n
        self.interval = interval
        self.sel = selectors.DefaultSelector()
        self.pending: dict[int, socket.socket] = {}  # fd -> connecting socket
        self.held: dict[int, socket.socket] = {}  # fd -> established socket
        self._order: list[socket.socket] | None = None  # held, in a stable order for slices
        self.started_connects = 0
        self.connect_failed = 0
        self.echoes = 0
        self.closed_by_peer = 0
        self.rss_start_kb = rss_kb()
        self._cursor = 0
        self._last = (time.monotonic(), 0)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_stats: dict[int, dict[str, Any]] = {}

    def progress(self) -> dict[str, Any]:
        now = time.monotonic()
        t0, e0 = self._last
        self._last = (now, self.echoes)
        body: dict[str, Any] = {
            "held": len(self.held),
            "connecting": len(self.pending),
            "connect_failed": self.connect_failed,
            "closed_by_peer": self.closed_by_peer,
            "echoes_per_s": round((self.echoes - e0) / max(now - t0, 1e-9), 1),
            "rss_kb": rss_kb(),
            "rss_growth_kb": rss_kb() - self.rss_start_kb,
            "threads": threads(),
        }
        if self.workers:
            body["workers"] = len(self.workers)
            for key in ("held", "echoes_per_s", "connect_failed"):
                body[f"total_{key}"] = body[key] + sum(
                    w.get(key, 0) for w in self.worker_stats.values()
                )
        return body

    def set(self, args: dict[str, Any]) -> dict[str, Any]:
        if "interval" in args:
            if not isinstance(args["interval"], int | float) or args["interval"] <= 0:
                raise UsageError("set interval: give seconds > 0")
            self.interval = float(args["interval"])
        return {"interval": self.interval}

    def spawn_workers(self, args: argparse.Namespace, extra: int) -> None:
        per = math.ceil(extra / math.ceil(extra / args.per_process))
        while extra > 0:
            n = min(per, extra)
            extra -= n
            argv = [sys.executable, "-m", "actors.multiplexer", "--worker", "--quiet"]
            argv += ["--target", args.target, "--connections", str(n)]
            argv += ["--interval", str(args.interval), "--per-process", str(args.per_process)]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            self.sel.register(proc.stdout, selectors.EVENT_READ, proc)
            self.workers.append(proc)
        self.rt.log.info("workers", count=len(self.workers), pids=[w.pid for w in self.workers])

    def run(self, duration: float | None) -> None:
        deadline = time.monotonic() + duration if duration else None
        next_tick = time.monotonic()
        while self.rt.running and (deadline is None or time.monotonic() < deadline):
            self._connect_more()
            timeout = max(0.0, next_tick - time.monotonic())
            for key, _mask in self.sel.select(timeout=timeout):
                data = key.data
                if data is None:
                    self._read(key.fileobj)  # type: ignore[arg-type]
                elif isinstance(data, subprocess.Popen):
                    self._worker_line(data)
                else:
                    self._connected(data)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self._send_slice()
            self.rt.service(0)

    def _connect_more(self) -> None:
        while self.started_connects < self.want and len(self.pending) < IN_FLIGHT:
            self.started_connects += 1
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(self.target)
            if code not in (0, errno.EINPROGRESS):
                self._failed(sock, code)
                continue
            self.pending[sock.fileno()] = sock
            self.sel.register(sock, selectors.EVENT_WRITE, sock)

    def _failed(self, sock: socket.socket, code: int) -> None:
        self.connect_failed += 1
        err = OSError(code, os.strerror(code))
        self.rt.sock_log("connect_failed", "warning", fd=sock.fileno(), **error_fields(err))
        sock.close()

    def _connected(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        self.pending.pop(sock.fileno(), None)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._failed(sock, code)
            return
        self.rt.sock_log("connect", **runtime.sock_fields(sock))
        self.held[sock.fileno()] = sock
        self._order = None
        # data None marks an established connection: saves an object per socket.
        self.sel.register(sock, selectors.EVENT_READ, None)

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.echoes += data.count(b"\n")
            return
        self.closed_by_peer += 1
        self.rt.sock_log("peer_close", **runtime.sock_fields(sock))
        self.sel.unregister(sock)
        del self.held[sock.fileno()]
        self._order = None
        sock.close()

    def _send_slice(self) -> None:
        if self._order is None:
            self._order = list(self.held.values())
        held = self._order
        if not held:
            return
        # Every connection once per interval: a slice of them per tick.
        count = max(1, math.ceil(len(held) * TICK_S / self.interval))
        for _ in range(min(count, len(held))):
            self._cursor = (self._cursor + 1) % len(held)
            try:
                held[self._cursor].send(LINE)
            except OSError:
                pass  # a full buffer or a dying socket: the read side reports it

    def _worker_line(self, proc: subprocess.Popen[bytes]) -> None:
        out: IO[bytes] | None = proc.stdout
        assert out is not None
        chunk = out.read()
        if not chunk:
            self.sel.unregister(out)
            return
        for line in chunk.splitlines():
            try:
                self.worker_stats[proc.pid] = json.loads(line)
            except ValueError:
                continue

    def shutdown(self) -> None:
        for proc in self.workers:
            proc.terminate()
        for sock in list(self.held.values()) + list(self.pending.values()):
            fields = runtime.sock_fields(sock)
            sock.close()
            self.rt.sock_log("close", **fields)
        for proc in self.workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.held.clear()
        self.sel.close()


def multiplex(args: argparse.Namespace) -> int:
    target = parse_hostport(args.target)
    check_target(target[0], "open thousands of connections to")
    if args.connections < 0 or args.interval <= 0 or not 1 <= args.per_process <= PER_PROCESS:
        raise UsageError(
            f"--connections >= 0, --interval > 0, --per-process 1..{PER_PROCESS} please"
        )
    # A process holds what its hard open-file limit allows (20000 here, less
    # elsewhere); worker processes hold the rest.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard - FD_RESERVE < args.per_process:
        if hard <= 2 * FD_RESERVE:
            raise UsageError(
                f"open-file hard limit {hard} is too low: raise it (ulimit -Hn) above "
                f"{2 * FD_RESERVE}"
            )
        args.per_process = hard - FD_RESERVE
    mine = min(args.connections, args.per_process)
    limit = raise_nofile(mine + FD_RESERVE)
    if limit < mine + 50:
        raise UsageError(f"open-file limit {limit} is too low for {mine} connections")
    rt = Runtime("multiplexer", args)
    mux = Multiplexer(rt, target, mine, args.interval)
    rt.progress = mux.progress
    rt.on_set = mux.set
    rt.ready(target=f"{target[0]}:{target[1]}", connections=args.connections)
    if rt.wait_start():
        if args.connections > mine:
            mux.spawn_workers(args, args.connections - mine)
        if args.worker:
            # A worker reports to its parent on stdout, one JSON line a second.
            rt.reporter = lambda body: print(json.dumps(body), flush=True)
        mux.run(args.duration)
        rt.report(mux.progress())
    mux.shutdown()
    return rt.close()


def main(argv: list[str] | None = None) -> int:
    p = runtime.parser("multiplexer", "Hold N connections on one epoll loop (C10k).")
    p.add_argument("--target", default="127.0.0.1:8080", help="server HOST:PORT")
    p.add_argument("--connections", type=int, default=10000, help="connections to hold")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between lines per conn")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--per-process", type=int, default=PER_PROCESS, help="connections per process")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return runtime.run(lambda: multiplex(args), "multiplexer")


if __name__ == "__main__":
    raise SystemExit(main())
