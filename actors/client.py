"""The seed's client: connect, send N lines, read the echoes, close.

The client closes first (the active closer), so its side of each
connection goes through FIN_WAIT and TIME_WAIT. `--repeat M` does it M times.

    python -m actors.client --target 127.0.0.1:8080 --lines 3 --repeat 2
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from actors import runtime
from actors.runtime import Runtime, UsageError, error_fields, parse_hostport, sock_fields

TIMEOUT_S = 5.0


class Client:
    def __init__(self, rt: Runtime, target: tuple[str, int], lines: int, repeat: int) -> None:
        self.rt = rt
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
        log.info("connect", session=n, **fields)
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
        except OSError as e:
            self.failures += 1
            log.warning("recv_failed", **fields, **error_fields(e))
        finally:
            reader.close()
            sock.close()
            log.info("close", **fields)


def session(args: argparse.Namespace) -> int:
    target = parse_hostport(args.target)
    if args.lines < 0 or args.repeat < 0:
        raise UsageError("--lines and --repeat must be 0 or more")
    rt = Runtime("client", args)
    client = Client(rt, target, args.lines, args.repeat)
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
    args = p.parse_args(argv)
    return runtime.run(lambda: session(args), "client")


if __name__ == "__main__":
    raise SystemExit(main())
