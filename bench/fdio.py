"""What the syscall barrier costs: probes/fdio.bpf.c attached vs not.

    .venv/bin/python -m bench.fdio [--rounds 3] [--bytes 1073741824] [--count 20000]

fdio runs on every read, write and close of every process of the machine
(a failed hash lookup for the fds it does not account) and counts into a
map for the sockets it does. Two workloads, each paired with itself without
the probe, who goes first alternating (bench.pairs.paired):
- a bulk transfer over loopback: a child process sends BYTES in 64 KiB
  writes and reads them in 64 KiB reads; the figure is its CPU per MiB;
- the bomber (actors.bomber) against the C accept/close server: two socket
  fds per connection registered, counted and closed (an fd_event each); the
  figure is the CPU per connection of both.
fdio is loaded machine-wide, as `tcplab watch` loads it, and drained by
this process while the workload runs. Goal: both ratios <= 1.05.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.builds import build_c
from bench.common import PY, BenchError, log
from bench.cpu import cpu_s
from bench.pairs import Row, paired
from bench.procs import bomber_argv, bomber_cpu_us, c_server, free_port, idle_spinners, reap
from probes.loader import ProbeSet
from probes.plan import make_plan

SECTION = "Syscall barrier"
CHUNK = 65536
MIB = 1 << 20

BULK = r"""
import socket, sys, threading
total = int(sys.argv[1])
srv = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(srv.getsockname())
a, _ = srv.accept()
chunk = b"x" * 65536

def send():
    left = total
    while left > 0:
        left -= c.send(chunk[: min(left, len(chunk))])
    c.close()

threading.Thread(target=send).start()
buf = bytearray(65536)
got = 0
while True:
    n = a.recv_into(buf)
    if n == 0:
        break
    got += n
assert got == total
"""


class Attached:
    """fdio compiled and attached for one arm, drained while a process runs."""

    def __enter__(self) -> Attached:
        self.ps = ProbeSet(make_plan(), ["fdio"])
        self.ps.start(lambda _probe, _records: None)
        return self

    def idle(self) -> None:
        self.ps.poll(0.02)

    def __exit__(self, *exc: object) -> None:
        self.ps.drain_all()
        drops = self.ps.stats()["programs"]["fdio"]["drops"]
        self.ps.close()
        if drops:
            raise BenchError(f"fdio dropped {drops} records: the ring is too small")


def _bulk(nbytes: int, attached: bool) -> float:
    """CPU µs (user + system, both threads) per MiB moved."""
    proc = subprocess.Popen([PY, "-c", BULK, str(nbytes)], stderr=subprocess.PIPE)
    if attached:
        with Attached() as a:
            cpu = reap(proc, a.idle, limit_s=600)
    else:
        cpu = reap(proc, limit_s=600)
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise BenchError(f"the bulk transfer failed: {proc.stderr.read()[-300:]!r}")
    return cpu * 1e6 / (nbytes / MIB)


def _bomber(server_pid: int, port: int, count: int, attached: bool) -> float:
    """CPU µs per connection of both ends: the bomber's and the C server's."""
    before = cpu_s(server_pid)
    proc = subprocess.Popen(bomber_argv(port, count), stderr=subprocess.PIPE, text=True)
    if attached:
        with Attached() as a:
            reap(proc, a.idle, limit_s=600)
    else:
        reap(proc, limit_s=600)
    after = cpu_s(server_pid)
    assert proc.stderr is not None
    err = proc.stderr.read()
    if before is None or after is None:
        raise BenchError("the C server died")
    return bomber_cpu_us(err, count) + (after - before) * 1e6 / count


def barrier_cost(nbytes: int, count: int, rounds: int, extra: int, c_exe: Path) -> list[Row]:
    """CPU per unit of work with fdio attached / without (<= 1.05: costs <= 5%).

    CPU, not throughput: on a machine shared with other work the rates swing
    by 2x between runs, while what a byte or a connection costs hardly moves;
    the BPF programs run inside the traced syscalls, so their time is the
    traced processes' system time."""
    log(f"bulk transfer of {nbytes >> 20} MiB, fdio attached / not, {rounds} pairs")
    bulk = paired(lambda: _bulk(nbytes, True), lambda: _bulk(nbytes, False), rounds, extra)
    port = free_port()
    log(f"bomber, {count} connections, fdio attached / not, {rounds} pairs")
    with c_server(c_exe, port) as srv:
        bomb = paired(
            lambda: _bomber(srv.pid, port, count, True),
            lambda: _bomber(srv.pid, port, count, False),
            rounds,
            extra,
        )
    return [
        bulk.row(
            "fdio_bulk", SECTION,
            f"bulk transfer ({CHUNK >> 10} KiB calls): CPU per MiB with fdio / without",
            "µs/MiB", "without fdio", ("with", "without"), goal="<= 1.05",
        ),
        bomb.row(
            "fdio_bomber", SECTION,
            "bomber + C server: CPU per connection with fdio / without",
            "µs/conn", "without fdio", ("with", "without"), goal="<= 1.05",
        ),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fdio", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--extra", type=int, default=2)
    p.add_argument("--bytes", type=int, default=1 << 30)
    p.add_argument("--count", type=int, default=20000)
    args = p.parse_args(argv)
    started = time.monotonic()
    with idle_spinners():
        rows = barrier_cost(args.bytes, args.count, args.rounds, args.extra, build_c())
    for r in rows:
        r.judge()
        spread = r.spread
        print(
            f"{r.key}: {r.value:,.0f} vs {r.peer:,.0f} {r.unit}: ratio {r.ratio:.3f} "
            f"(spread {spread[0]:.3f}-{spread[1]:.3f}, {len(r.ratios)} pairs), goal {r.goal}: "
            f"{'met' if r.met else 'NOT met'}"
            if spread and r.value is not None and r.peer is not None and r.ratio is not None
            else f"{r.key}: not measured"
        )
    log(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
