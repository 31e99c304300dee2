"""The seed's LEAK=true server: echoes, but never closes a connection.

When a peer closes, the leaker notices and still keeps its socket: the
leaker's side sits in CLOSE_WAIT, the peer's in FIN_WAIT_2. Every accepted
connection costs an fd for good, so with `--nofile N` (RLIMIT_NOFILE)
accept() soon fails with EMFILE, "too many open files"; each failure is
logged with errno and the open-fd count.

After EMFILE the connection stays in the accept queue and the listener
stays readable, so the leaker stops watching it for a back-off period
instead of spinning.

    python -m actors.leaker --port 8080 --nofile 64
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import time
from typing import Any

from actors import runtime
from actors.runtime import Runtime, UsageError, error_fields, open_fds
from actors.server import Conn, EchoServer, listen

BACKOFF_S = 0.2
BACKOFF_MAX_S = 2.0


class Leaker(EchoServer):
    def __init__(self, rt: Runtime, lsock: socket.socket) -> None:
        super().__init__(rt, lsock)
        self.leaked: list[Conn] = []
        self.accept_failed = 0
        self.backoff_s = BACKOFF_S
        self.resume_at = 0.0
        # One fd held in reserve: counting open fds needs one, and at EMFILE
        # there is none left.
        self.spare = os.open("/dev/null", os.O_RDONLY)

    def count_fds(self) -> int:
        os.close(self.spare)
        try:
            return open_fds() + 1
        finally:
            self.spare = os.open("/dev/null", os.O_RDONLY)

    def progress(self) -> dict[str, object]:
        body = super().progress()
        body.update(
            leaked=len(self.leaked), accept_failed=self.accept_failed, open_fds=self.count_fds()
        )
        return body

    def loop(self) -> None:
        while self.rt.running:
            if self.resume_at and time.monotonic() >= self.resume_at:
                self.resume_at = 0.0
                self.sel.register(self.lsock, selectors.EVENT_READ, None)
            for key, mask in self.sel.select(timeout=0.05):
                if key.data is None:
                    self.accept()
                else:
                    self.handle(key.data, mask)
            self.rt.service(0)

    def accept_error(self, e: OSError) -> None:
        self.accept_failed += 1
        self.rt.log.warning(
            "accept_failed",
            fd=self.lsock.fileno(),
            open_fds=self.count_fds(),
            backoff_s=self.backoff_s,
            **error_fields(e),
        )
        # The failed connection is still queued, so the listener stays
        # readable: stop watching it for a while instead of spinning.
        self.sel.unregister(self.lsock)
        self.resume_at = time.monotonic() + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)

    def adopt(self, sock: socket.socket, peer: Any) -> None:
        self.backoff_s = BACKOFF_S
        super().adopt(sock, peer)

    def close(self, conn: Conn) -> None:
        # The leak: forget the connection but keep its socket (and fd) open.
        self.sel.unregister(conn.sock)
        self.conns.pop(conn.sock.fileno(), None)
        self.leaked.append(conn)
        self.rt.log.info("leak", open_fds=self.count_fds(), **conn.fields)

    def shutdown(self) -> None:
        # Stopping the actor ends the experiment: release everything.
        for conn in self.leaked + list(self.conns.values()):
            conn.sock.close()
            self.rt.log.info("close", **conn.fields)
        self.leaked.clear()
        self.conns.clear()
        os.close(self.spare)
        if self.resume_at:
            self.sel.register(self.lsock, selectors.EVENT_READ, None)
        super().shutdown()


def set_nofile(n: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if not 8 <= n <= hard:
        raise UsageError(f"--nofile {n}: give 8 to {hard} (the hard limit)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    return n


def serve(args: argparse.Namespace) -> int:
    if args.nofile is not None:
        set_nofile(args.nofile)
    lsock = listen(args.host, args.port, args.backlog)
    rt = Runtime("leaker", args)
    host, port = lsock.getsockname()[:2]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    rt.log.info("listen", fd=lsock.fileno(), laddr=host, lport=port, nofile=nofile)
    leaker = Leaker(rt, lsock)
    rt.progress = leaker.progress
    rt.ready(host=host, port=port, nofile=nofile)
    if rt.wait_start():
        leaker.loop()
    leaker.shutdown()
    return rt.close()


def main(argv: list[str] | None = None) -> int:
    p = runtime.parser("leaker", "Leaking server: never closes, reaches 'too many open files'.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    p.add_argument("--backlog", type=int, default=4096)
    p.add_argument("--nofile", type=int, default=None, help="RLIMIT_NOFILE soft limit to set")
    args = p.parse_args(argv)
    return runtime.run(lambda: serve(args), "leaker")


if __name__ == "__main__":
    raise SystemExit(main())
