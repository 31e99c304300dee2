"""The seed's echo server: each line comes back as "ECHO: " + line.

One thread, one epoll loop (selectors). Logs listen, accept, echo,
peer_close and close with the fd and the local 4-tuple.

    python -m actors.server --port 8080
"""

from __future__ import annotations

import argparse
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from actors import runtime
from actors.runtime import Runtime, UsageError, error_fields, raise_nofile, sock_fields

PREFIX = b"ECHO: "
MAX_LINE = 64 * 1024  # a client that never sends a newline must not grow us forever


@dataclass
class Conn:
    sock: socket.socket
    fields: dict[str, Any]  # fd and the 4-tuple, for the records that carry more
    # The same as positional arguments of SocketLog.conn (None when the peer
    # was gone before getpeername): the per-connection records are typed.
    key: tuple[int, str, int, str, int] | None
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    echoes: int = 0
    # A slow reader (--read-delay) stops reading a connection until this time.
    resume_at: float = 0.0
    events: int = selectors.EVENT_READ  # what the selector watches (0: not registered)


def listen(
    host: str, port: int, backlog: int, congestion: str | None = None, rcvbuf: int = 0
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # The seed's strace shows it: restart at once despite TIME_WAIT leftovers.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Set on the listener, both pass to every accepted socket; the receive
    # buffer before listen() also decides the window scale offered in the SYN-ACK.
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if congestion:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
        except OSError as e:
            sock.close()
            raise UsageError(
                f"--congestion {congestion}: {e.strerror}; see "
                "/proc/sys/net/ipv4/tcp_available_congestion_control"
            ) from None
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror}; pick another --port"
        ) from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class EchoServer:
    def __init__(
        self, rt: Runtime, lsock: socket.socket, read_chunk: int = 65536, read_delay: float = 0.0
    ) -> None:
        self.rt = rt
        # A slow reader: at most read_chunk bytes per read, then read_delay
        # seconds before that connection is read again (its receive window
        # fills, the sender sees a zero window).
        self.read_chunk = read_chunk
        self.read_delay = read_delay
        self.paused: list[Conn] = []
        self.lsock = lsock
        self.sel = selectors.DefaultSelector()
        self.sel.register(lsock, selectors.EVENT_READ, None)
        self.conns: dict[int, Conn] = {}
        host, port = lsock.getsockname()[:2]
        # Every connection's local end, unless the listener takes any address.
        self.local: tuple[str, int] | None = None if host in ("0.0.0.0", "::") else (host, port)
        self.accepted = 0
        self.echoed = 0
        self.closed = 0

    def progress(self) -> dict[str, object]:
        return {
            "open": len(self.conns),
            "accepted": self.accepted,
            "echoes": self.echoed,
            "closed": self.closed,
        }

    def loop(self) -> None:
        while self.rt.running:
            for key, mask in self.sel.select(timeout=0.05):
                if key.data is None:
                    self.accept()
                else:
                    self.handle(key.data, mask)
            if self.paused:
                self.resume()
            self.rt.service(0)

    def resume(self) -> None:
        now = time.monotonic()
        due = [c for c in self.paused if c.resume_at <= now]
        self.paused = [c for c in self.paused if c.resume_at > now]
        for conn in due:
            if conn.sock.fileno() >= 0:
                self.watch(conn)

    def accept(self) -> None:
        # Bounded per wake-up so a flood of connects cannot starve the bus.
        for _ in range(256):
            try:
                sock, peer = self.lsock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self.accept_error(e)
                return
            self.adopt(sock, peer)

    def accept_error(self, e: OSError) -> None:
        self.rt.log.warning("accept_failed", fd=self.lsock.fileno(), **error_fields(e))

    def adopt(self, sock: socket.socket, peer: Any) -> None:
        sock.setblocking(False)
        key: tuple[int, str, int, str, int] | None
        if self.local is None:  # a wildcard listener: the local end varies
            f = sock_fields(sock)
            has_tuple = "rport" in f
            key = (f["fd"], f["laddr"], f["lport"], f["raddr"], f["rport"]) if has_tuple else None
        else:
            # accept() gave the peer and the listener's address is the local
            # end: two syscalls fewer per connection than sock_fields.
            key = (sock.fileno(), self.local[0], self.local[1], peer[0], peer[1])
            f = dict(zip(("fd", "laddr", "lport", "raddr", "rport"), key, strict=True))
        conn = Conn(sock, f, key)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.accepted += 1
        self.record("accept", conn)

    def record(self, event: str, conn: Conn) -> None:
        """A per-connection record with no more than the fd and the 4-tuple."""
        if conn.key is None:
            self.rt.sock_log(event, **conn.fields)
        else:
            self.rt.sock_log.conn(event, *conn.key)

    def handle(self, conn: Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush(conn)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = conn.sock.recv(self.read_chunk)
        except BlockingIOError:
            return
        except OSError as e:
            # ECONNRESET, or ETIMEDOUT when the kernel gave up on the peer.
            how = "reset" if isinstance(e, ConnectionError) else "error"
            self.rt.sock_log("peer_close", how=how, **conn.fields, **error_fields(e))
            self.close(conn)
            return
        if not data:
            # A FIN is the common end (the bomber's every connection): the
            # typed record; how="reset" above says when it was not.
            self.record("peer_close", conn)
            self.close(conn)
            return
        conn.inbuf += data
        while (nl := conn.inbuf.find(b"\n")) >= 0:
            line = bytes(conn.inbuf[: nl + 1])
            del conn.inbuf[: nl + 1]
            conn.outbuf += PREFIX + line
            conn.echoes += 1
            self.echoed += 1
            self.rt.sock_log("echo", bytes=len(line), **conn.fields)
        if len(conn.inbuf) > MAX_LINE:
            self.rt.sock_log("line_too_long", "warning", bytes=len(conn.inbuf), **conn.fields)
            self.close(conn)
            return
        if self.read_delay:
            conn.resume_at = time.monotonic() + self.read_delay
            self.paused.append(conn)
        self.flush(conn)

    def flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf) if conn.outbuf else 0
        except BlockingIOError:
            sent = 0
        except OSError as e:
            # ECONNRESET or EPIPE: the peer is gone; ETIMEDOUT: the kernel gave up.
            how = "reset" if isinstance(e, ConnectionError) else "error"
            self.rt.sock_log("peer_close", how=how, **conn.fields, **error_fields(e))
            self.close(conn)
            return
        del conn.outbuf[:sent]
        self.watch(conn)

    def watch(self, conn: Conn) -> None:
        """Select on what the connection waits for: reading unless paused, writing if owed."""
        paused = conn.resume_at > time.monotonic()
        want = (0 if paused else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if conn.outbuf else 0
        )
        if want == conn.events:
            return
        if not want:
            self.sel.unregister(conn.sock)
        elif not conn.events:
            self.sel.register(conn.sock, want, conn)
        else:
            self.sel.modify(conn.sock, want, conn)
        conn.events = want

    def close(self, conn: Conn) -> None:
        if conn.events:
            self.sel.unregister(conn.sock)
        conn.events = 0
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        self.closed += 1
        self.record("close", conn)

    def shutdown(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)
        fields = {"fd": self.lsock.fileno()}
        self.sel.unregister(self.lsock)
        self.lsock.close()
        self.rt.log.info("close", listener=True, **fields)
        self.sel.close()


def serve(args: argparse.Namespace) -> int:
    raise_nofile()  # an echo server for C10k needs more than the default 1024
    if args.rcvbuf < 0:
        raise UsageError("--rcvbuf must be 0 (the kernel's default) or a size in bytes")
    if args.read_chunk < 1 or args.read_delay < 0:
        raise UsageError("--read-chunk must be at least 1 byte and --read-delay 0 or more s")
    lsock = listen(args.host, args.port, args.backlog, args.congestion, args.rcvbuf)
    rt = Runtime("server", args)
    # Per-connection records take the lean path; run alone, a person still
    # sees each one on stderr, as the seed's server printed them.
    rt.sock_log.echo = not rt.attached and not args.quiet
    host, port = lsock.getsockname()[:2]
    rt.log.info(
        "listen",
        fd=lsock.fileno(),
        laddr=host,
        lport=port,
        backlog=args.backlog,
        congestion=args.congestion,
        rcvbuf=args.rcvbuf,
    )
    server = EchoServer(rt, lsock, args.read_chunk, args.read_delay)
    rt.progress = server.progress
    rt.ready(host=host, port=port)
    if rt.wait_start():
        server.loop()
    server.shutdown()
    return rt.close()


def main(argv: list[str] | None = None) -> int:
    p = runtime.parser("server", "Echo server: answers each line with 'ECHO: ' + line.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    p.add_argument("--backlog", type=int, default=4096, help="listen() backlog")
    p.add_argument(
        "--congestion", default=None, help="congestion control for accepted sockets, e.g. cubic"
    )
    p.add_argument(
        "--rcvbuf",
        type=int,
        default=0,
        help="SO_RCVBUF in bytes for accepted sockets (0: autotuned)",
    )
    p.add_argument("--read-chunk", type=int, default=65536, help="bytes per read of a connection")
    p.add_argument(
        "--read-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="a slow reader: S seconds between two reads of a connection",
    )
    args = p.parse_args(argv)
    return runtime.run(lambda: serve(args), "server")


if __name__ == "__main__":
    raise SystemExit(main())
