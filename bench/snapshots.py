"""Socket snapshot speed: probes/sockdiag.py against `ss -tin` on the same sockets.

    .venv/bin/python -m bench.snapshots [--sockets 10000]

A lab host's namespace (its own TCP hash table, as lab/hosts.py makes it)
holds N TCP sockets (N/2 loopback connections, both ends) on one port.
One arm is a snapshot as the lab takes it (sock_diag with the port filter
and tcp_info, parsed with struct); the peer is `ss -tin` for the
same port, as a person would run it, and pyroute2's own decoding of the same
request is a second peer. Rows: time per snapshot (goal: well under 100 ms
for 10k sockets) and the ratios, paired and alternating (bench.pairs).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import DiagSocket, netns

from bench.common import BenchError, log
from bench.pairs import Row, paired
from lab.hosts import Hosts, HostSpec
from lab.netns import LabNamespace
from probes.sockdiag import DiagQuery

PORT = 19435
SECTION = "Socket snapshots"
TCP_INFO_EXT = 1 << 1  # INET_DIAG_INFO - 1
BUDGET_MS = 100.0


def _in(ns: LabNamespace, fn: Callable[[], Any]) -> Any:
    netns.pushns(ns.name)
    try:
        return fn()
    finally:
        netns.popns()


def _hold(ns: LabNamespace, n: int) -> list[socket.socket]:
    """n sockets on PORT inside the namespace (n/2 connections and the listener)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if n + 64 > hard:
        raise BenchError(f"{n} sockets need {n + 64} open files; the hard limit is {hard}")
    server = _in(ns, lambda: socket.create_server(("127.0.0.1", PORT), backlog=4096))
    held = [server]
    for _ in range(n // 2):
        c = _in(ns, socket.socket)
        c.connect(("127.0.0.1", PORT))
        held += [c, server.accept()[0]]
    return held


def snapshot_speed(n: int, pairs: int, extra: int) -> list[Row]:
    # A host as a lab makes it: with a TCP hash table of its own, so both
    # arms walk these sockets, not every other run's on the machine.
    parent = LabNamespace("bench-snap").create()
    hosts = Hosts("bench-snap", [HostSpec("s")])
    try:
        hosts.create(parent)
    except BaseException:
        parent.destroy()
        raise
    ns = hosts["s"]
    held: list[socket.socket] = []
    try:
        held = _hold(ns, n)
        query = _in(ns, DiagQuery)
        ds = _in(ns, DiagSocket)
        ds.bind()

        def ours() -> float:
            t0 = time.perf_counter()
            got = query.sockets([PORT])
            took = time.perf_counter() - t0
            if len([s for s in got if s.tcp_info is not None]) != len(held):
                raise BenchError(f"snapshot saw {len(got)} sockets, {len(held)} are open")
            return took

        def ss() -> float:
            argv = ns.command(["ss", "-tinH", f"sport = :{PORT} or dport = :{PORT}"])
            t0 = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            took = time.perf_counter() - t0
            if out.count("mss:") + out.count("LISTEN") < len(held) - 1:
                raise BenchError("ss printed fewer sockets than are open")
            return took

        def pyroute2() -> float:
            t0 = time.perf_counter()
            got = ds.get_sock_stats(family=socket.AF_INET, extensions=TCP_INFO_EXT)
            took = time.perf_counter() - t0
            if len(got) < len(held):
                raise BenchError("pyroute2 saw fewer sockets than are open")
            return took

        log(f"{SECTION}: {len(held)} sockets, ours vs ss -tin")
        vs_ss = paired(ours, ss, pairs, extra)
        log(f"{SECTION}: ours vs pyroute2's decoding")
        vs_pr = paired(ours, pyroute2, max(1, pairs // 2), 0)
        query.close()
        ds.close()
    finally:
        for s in held:
            s.close()
        hosts.destroy()
        parent.destroy()
    rows = [
        vs_ss.row(
            "snapshot_vs_ss",
            SECTION,
            f"snapshot of {len(held)} sockets vs `ss -tin`",
            "s",
            "ss -tin",
            ("sockdiag", "ss"),
            goal="<= 1.0",
            note="ratio < 1: the snapshot is faster",
        ),
        vs_pr.row(
            "snapshot_vs_pyroute2",
            SECTION,
            f"snapshot of {len(held)} sockets vs pyroute2 decoding",
            "s",
            "pyroute2 get_sock_stats",
            ("sockdiag", "pyroute2"),
        ),
    ]
    took = rows[0].value or 0.0
    # Against the budget: "10k sockets must snapshot in well under 100 ms".
    rows.append(
        Row(
            "snapshot_ms",
            SECTION,
            f"one snapshot of {len(held)} sockets",
            round(took * 1000, 2),
            "ms",
            peer=BUDGET_MS,
            peer_label="the 100 ms budget",
            goal=f"<= {BUDGET_MS:g}",
            goal_on="value",
            runs={"sockdiag": vs_ss.value},
        )
    )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sockets", type=int, default=10_000)
    p.add_argument("--pairs", type=int, default=5)
    args = p.parse_args()
    for r in snapshot_speed(args.sockets, args.pairs, 3):
        r.judge()
        print(
            f"{r.key:<22} {r.value} {r.unit}  peer {r.peer}  ratio {r.ratio}  "
            f"spread {r.spread}  goal {r.goal} met {r.met}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
