"""Memory of `tcplab watch`'s owner tables (probes/owners.py) at 100k sockets.

    .venv/bin/python -m bench.owners [--sockets 100000]

Feeds the tables what a machine with N live client sockets shows watch:
per socket its connect (owner), its CLOSE -> SYN_SENT -> ESTABLISHED, and
an fdio close with its skaddr; then 3x as many more, to show the tables
stop growing at MAX_SOCKETS. Reports tracemalloc's bytes held (Python
objects only: what the tables cost, not the interpreter).
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from typing import Any

from probes.owners import MAX_SOCKETS, Owners


def _socket_events(i: int) -> list[dict[str, Any]]:
    sk = 0xFFFF_0000_0000_0000 + i * 64
    port = 1024 + i % 60000
    base = {"skaddr": sk, "family": 2, "saddr": "10.0.0.1", "daddr": "10.0.0.2", "dport": 80}
    return [
        {"type": "connect", "ts": 10 * i + 2, "dur_ns": 2, "skaddr": sk, "pid": 4242,
         "comm": "client", "fd": 3 + i % 20000},
        {"type": "tcp_state", "ts": 10 * i + 1, **base, "sport": 0, "cpu_pid": 4242,
         "cpu_comm": "client", "old": "CLOSE", "new": "SYN_SENT"},
        {"type": "tcp_state", "ts": 10 * i + 3, **base, "sport": port, "cpu_pid": 0,
         "cpu_comm": "swapper/0", "old": "SYN_SENT", "new": "ESTABLISHED"},
    ]  # fmt: skip


def held(n: int) -> int:
    """Bytes the tables hold after n sockets went live."""
    owners = Owners()
    tracemalloc.start()
    for start in range(0, n, 1000):
        batch = [e for i in range(start, min(n, start + 1000)) for e in _socket_events(i)]
        batch.sort(key=lambda e: e["ts"])
        owners.feed(batch)
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(owners.owners) <= MAX_SOCKETS and len(owners.socks) <= MAX_SOCKETS
    return size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.owners", description=__doc__.splitlines()[0])
    p.add_argument("--sockets", type=int, default=100_000)
    args = p.parse_args(argv)
    for n in (args.sockets, 4 * args.sockets):
        b = held(n)
        per = b / min(n, MAX_SOCKETS)
        print(f"{n:>9,} sockets fed: {b / 2**20:6.1f} MiB held, {per:.0f} B/socket "
              f"(tables cap at {MAX_SOCKETS:,})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
