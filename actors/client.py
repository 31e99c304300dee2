"""The seed's client: connect, send N lines, read the echoes, close.

The client closes first (the active closer), so its side of each
connection goes through FIN_WAIT and TIME_WAIT. `--repeat M` does it M times.
`--congestion NAME` and `--keepalive IDLE,INTVL,CNT` set up each socket
before it connects; the connect record carries what the handshake
negotiated (tcp_info) and the congestion algorithm the kernel used.
`--send-bytes N` then sends N bytes as fast as the connection takes them
(lines of 1 KiB, which an echo server accepts; whatever comes back is read
and dropped) and records how long it took and what TCP retransmitted.
`--idle S` keeps the connection open and silent for S seconds after that:
the kernel's keepalive probes are then the only traffic, and a
peer that vanished ends the wait with ETIMEDOUT.

    python -m actors.client --target 127.0.0.1:8080 --lines 3 --repeat 2
    python -m actors.client --target 198.18.0.2:8080 --lines 1 --idle 30 --keepalive 2,1,5
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import time
from typing import Any

from actors import runtime
from actors.runtime import Runtime, UsageError, error_fields, parse_hostport, sock_fields
from probes.sockdiag import tcp_info_of

TIMEOUT_S = 5.0
IDLE_POLL_S = 0.1  # how often an idle connection lets the bus be serviced
# What the connect record keeps of tcp_info: the handshake's outcome.
HANDSHAKE = ("snd_mss", "rcv_mss", "advmss", "pmtu", "snd_wscale", "rcv_wscale")
BULK_CHUNK = (b"x" * 1023 + b"\n") * 64  # 64 KiB of lines


def parse_keepalive(text: str) -> tuple[int, int, int] | None:
    """'2,1,5' -> (idle s, interval s, probes); '' -> None (keepalive off)."""
    if not text:
        return None
    try:
        idle, intvl, cnt = (int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(
            f"--keepalive {text!r}: give IDLE,INTVL,CNT in seconds and probes, e.g. 2,1,5"
        ) from None
    if not (1 <= idle <= 32767 and 1 <= intvl <= 32767 and 1 <= cnt <= 127):
        raise UsageError("--keepalive: IDLE and INTVL from 1 to 32767 s, CNT from 1 to 127")
    return idle, intvl, cnt


def set_up(
    sock: socket.socket, congestion: str | None, keepalive: tuple[int, int, int] | None
) -> None:
    if congestion:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
        except OSError as e:
            raise UsageError(
                f"--congestion {congestion}: {e.strerror}; see "
                "/proc/sys/net/ipv4/tcp_available_congestion_control"
            ) from None
    if keepalive:
        idle, intvl, cnt = keepalive
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt)


class Client:
    def __init__(
        self,
        rt: Runtime,
        target: tuple[str, int],
        lines: int,
        repeat: int,
        congestion: str | None = None,
        keepalive: tuple[int, int, int] | None = None,
        idle_s: float = 0.0,
        send_bytes: int = 0,
    ) -> None:
        self.rt = rt
        self.send_bytes = send_bytes
        self.congestion = congestion
        self.keepalive = keepalive
        self.idle_s = idle_s
        self.target = target
        self.lines = lines
        self.repeat = repeat
        self.done = 0
        self.echoes = 0
        self.failures = 0

    def progress(self) -> dict[str, Any]:
        return {"sessions": self.done, "echoes": self.echoes, "failures": self.failures}

    def set(self, args: dict[str, Any]) -> dict[str, Any]:
        for key in ("lines", "repeat"):
            if key in args:
                if not isinstance(args[key], int) or args[key] < 0:
                    raise UsageError(f"set {key}: give a non-negative integer")
                setattr(self, key, args[key])
        return {"lines": self.lines, "repeat": self.repeat}

    def run(self) -> None:
        while self.rt.running and self.done < self.repeat:
            self.session(self.done)
            self.done += 1
            self.rt.service(0)

    def session(self, n: int) -> None:
        log = self.rt.log
        sock = socket.socket(socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET)
        sock.settimeout(TIMEOUT_S)
        set_up(sock, self.congestion, self.keepalive)
        try:
            sock.connect(self.target)
        except OSError as e:
            self.failures += 1
            log.warning(
                "connect_failed", fd=sock.fileno(), target=list(self.target), **error_fields(e)
            )
            sock.close()
            return
        fields = sock_fields(sock)
        info = tcp_info_of(sock)
        log.info(
            "connect",
            session=n,
            **fields,
            congestion=info["congestion"],
            options=",".join(info["options"]),
            **{k: info[k] for k in HANDSHAKE},
        )
        reader = sock.makefile("rb")
        try:
            for i in range(self.lines):
                line = f"hello {n}.{i}\n".encode()
                sock.sendall(line)
                log.info("send", bytes=len(line), **fields)
                reply = reader.readline()
                if not reply:
                    log.warning("peer_close", how="fin", **fields)
                    self.failures += 1
                    break
                self.echoes += 1
                log.info("recv", bytes=len(reply), ok=reply == b"ECHO: " + line, **fields)
            else:
                if self.send_bytes and not self.bulk(sock, fields):
                    return
                if self.idle_s:
                    self.idle(sock, fields)
        except OSError as e:
            self.failures += 1
            log.warning("recv_failed", **fields, **error_fields(e))
        finally:
            reader.close()
            sock.close()
            log.info("close", **fields)

    def bulk(self, sock: socket.socket, fields: dict[str, Any]) -> bool:
        """Send --send-bytes and wait until the peer has acknowledged all of
        them (handed to the kernel is not sent); False if the connection broke."""
        log = self.rt.log
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        left, again, t0 = self.send_bytes, 0, time.monotonic()
        try:
            while self.rt.running and (left or tcp_info_of(sock)["unacked"]):
                if not left:
                    sel.modify(sock, selectors.EVENT_READ)
                for _key, mask in sel.select(IDLE_POLL_S):
                    if mask & selectors.EVENT_READ and not sock.recv(1 << 16):
                        log.warning("peer_close", how="fin", sent=self.send_bytes - left, **fields)
                        self.failures += 1
                        return False
                    if mask & selectors.EVENT_WRITE and left:
                        try:
                            left -= sock.send(memoryview(BULK_CHUNK)[: min(left, len(BULK_CHUNK))])
                        except BlockingIOError:  # EAGAIN: the send buffer is full
                            again += 1
                self.rt.service(0)
        except OSError as e:  # EPIPE, ECONNRESET, ETIMEDOUT
            self.failures += 1
            log.warning("send_failed", sent=self.send_bytes - left, **fields, **error_fields(e))
            return False
        finally:
            sel.close()
            sock.settimeout(TIMEOUT_S)
        info = tcp_info_of(sock)
        log.info(
            "bulk_sent",
            bytes=self.send_bytes - left,
            seconds=round(time.monotonic() - t0, 6),
            eagain=again,
            total_retrans=info["total_retrans"],
            cwnd=info["snd_cwnd"],
            rtt_us=info["rtt"],
            congestion=info["congestion"],
            **fields,
        )
        return True

    def idle(self, sock: socket.socket, fields: dict[str, Any]) -> None:
        """Stay connected and silent; end early on FIN, reset or a kernel timeout."""
        log = self.rt.log
        log.info("idle", seconds=self.idle_s, **fields)
        sock.settimeout(IDLE_POLL_S)
        end = time.monotonic() + self.idle_s
        while self.rt.running and time.monotonic() < end:
            try:
                data = sock.recv(65536)
            except TimeoutError as e:
                # Python raises TimeoutError both for its own socket timeout
                # (errno None: nothing arrived, keep waiting) and for the
                # kernel's ETIMEDOUT (keepalive or retransmissions gave up).
                if e.errno != errno.ETIMEDOUT:
                    self.rt.service(0)
                    continue
                raise
            if not data:
                log.warning("peer_close", how="fin", **fields)
                self.failures += 1
                return
        log.info("idle_end", **fields)


def session(args: argparse.Namespace) -> int:
    target = parse_hostport(args.target)
    if args.lines < 0 or args.repeat < 0:
        raise UsageError("--lines and --repeat must be 0 or more")
    if args.idle < 0 or args.send_bytes < 0:
        raise UsageError("--idle and --send-bytes must be 0 or more")
    keepalive = parse_keepalive(args.keepalive)
    with socket.socket() as probe:  # a bad --congestion is a usage error now, not per session
        set_up(probe, args.congestion, keepalive)
    rt = Runtime("client", args)
    client = Client(
        rt, target, args.lines, args.repeat, args.congestion, keepalive, args.idle, args.send_bytes
    )
    rt.progress = client.progress
    rt.on_set = client.set
    rt.ready(target=f"{target[0]}:{target[1]}")
    if rt.wait_start():
        client.run()
        # Under the orchestrator, stay until told to stop: the report wants
        # our final counters and the kernel's TIME_WAITs after we are done.
        # The orchestrator ends a phase early on `done` (until_done).
        rt.report({**client.progress(), "done": True})
        while rt.attached and not rt.stopping:
            rt.service(100)
    return rt.close()


def main(argv: list[str] | None = None) -> int:
    p = runtime.parser("client", "Connect, send lines, read echoes, close first.")
    p.add_argument("--target", default="127.0.0.1:8080", help="server HOST:PORT")
    p.add_argument("--lines", type=int, default=3, help="lines per connection")
    p.add_argument("--repeat", type=int, default=1, help="connections, one after another")
    p.add_argument(
        "--congestion",
        default=None,
        help="congestion control per socket, e.g. cubic (default: the namespace's)",
    )
    p.add_argument(
        "--keepalive",
        default="",
        metavar="IDLE,INTVL,CNT",
        help="SO_KEEPALIVE with these TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, e.g. 2,1,5",
    )
    p.add_argument(
        "--send-bytes",
        type=int,
        default=0,
        metavar="N",
        help="after the lines, send N bytes as fast as TCP takes them (bulk)",
    )
    p.add_argument(
        "--idle",
        type=float,
        default=0.0,
        metavar="S",
        help="after the lines, keep the connection open and silent for S seconds",
    )
    args = p.parse_args(argv)
    return runtime.run(lambda: session(args), "client")


if __name__ == "__main__":
    raise SystemExit(main())
